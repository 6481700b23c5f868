"""`timetuner bench`: the CI-sized run, its outputs, merging runs and the README section it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from timetuner_plugins.bench import README_END, README_START
from timetuner_plugins.cli import cli


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(cli, ["bench", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_quick_bench_writes_json_table_and_plots(quick_run):
    data = json.loads((quick_run / "results.json").read_text())
    methods = {r["method"] for r in data["records"]}
    assert methods == {"untuned", "paper-seq", "ours"}
    for r in data["records"]:
        assert r["fd"] > 0 and r["traj_err"] >= 0 and r["fd_reference"] > 0
        if r["method"] != "untuned":
            assert r["tune_seconds"] > 0 and len(r["tau_over_sigma"]) == r["nfe"]
    untuned = next(r for r in data["records"] if r["method"] == "untuned")
    assert untuned["gap_closed"] == 0.0
    table = (quick_run / "results.md").read_text()
    assert "| gmm-digits | ddim | 5 |" in table and "paper-seq" in table
    assert (quick_run / "fd_vs_nfe_gmm-digits_ddim.png").stat().st_size > 1000


def test_merge_and_readme_section(quick_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{README_START}\nold\n{README_END}\n\ntail\n")
    out = tmp_path / "merged"
    result = CliRunner().invoke(cli, ["bench", "--merge", str(quick_run / "results.json"), "--merge",
                                      str(quick_run / "results.json"), "--out", str(out), "--update-readme", str(readme)])
    assert result.exit_code == 0, result.output
    merged = json.loads((out / "results.json").read_text())
    original = json.loads((quick_run / "results.json").read_text())
    assert len(merged["records"]) == len(original["records"])  # the same records, not doubled
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| gmm-digits | ddim | 5 |" in text


def test_readme_without_markers_is_refused(quick_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    result = CliRunner().invoke(cli, ["bench", "--merge", str(quick_run / "results.json"), "--out",
                                      str(tmp_path / "m"), "--update-readme", str(readme)])
    assert result.exit_code != 0
    assert "bench:start" in str(result.exception) + result.output
    assert readme.read_text() == "no markers here\n"


def test_merge_rejects_a_broken_file(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(cli, ["bench", "--merge", str(bad), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "cannot merge" in result.output
