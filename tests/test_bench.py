"""`timetuner bench`: the CI-sized run, its outputs, merging runs and the README section it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from timetuner_plugins.experiments.bench import README_END, README_START
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
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--merge",
            str(quick_run / "results.json"),
            "--merge",
            str(quick_run / "results.json"),
            "--out",
            str(out),
            "--update-readme",
            str(readme),
        ],
    )
    assert result.exit_code == 0, result.output
    merged = json.loads((out / "results.json").read_text())
    original = json.loads((quick_run / "results.json").read_text())
    assert len(merged["records"]) == len(original["records"])  # the same records, not doubled
    assert merged["threads"] == original["threads"]  # the runs' thread count, not the merging process's
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "| gmm-digits | ddim | 5 |" in text


def test_readme_without_markers_is_refused(quick_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--merge",
            str(quick_run / "results.json"),
            "--out",
            str(tmp_path / "m"),
            "--update-readme",
            str(readme),
        ],
    )
    assert result.exit_code != 0
    assert "bench:start" in str(result.exception) + result.output
    assert readme.read_text() == "no markers here\n"


def test_merge_rejects_a_broken_file(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(cli, ["bench", "--merge", str(bad), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "cannot merge" in result.output


def test_resume_runs_only_what_the_earlier_results_lack(quick_run, tmp_path):
    original = json.loads((quick_run / "results.json").read_text())
    kept = [r for r in original["records"] if r["method"] != "ours"]
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({**original, "records": kept}))
    result = CliRunner().invoke(cli, ["bench", "--quick", "--resume", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert " ours " in result.output and "paper-seq" not in result.output  # only the missing method ran
    resumed = json.loads((out / "results.json").read_text())
    assert sorted(r["method"] for r in resumed["records"]) == sorted(r["method"] for r in original["records"])
    assert [r for r in resumed["records"] if r["method"] != "ours"] == kept


def test_resume_refuses_results_made_with_another_sample_count(quick_run, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "results.json").write_text((quick_run / "results.json").read_text())
    result = CliRunner().invoke(cli, ["bench", "--quick", "--resume", "--n", "300", "--out", str(out)])
    assert result.exit_code != 0 and "--n" in result.output


def test_plan_runs_comparison_methods_only_on_their_cells():
    from timetuner_plugins.experiments.bench import METHODS, Plan

    plan = Plan(models=["m"], samplers=["ddim", "heun"], nfes=[4, 5, 10, 20], methods=list(METHODS), seeds=[0])
    assert set(plan.methods_for("ddim", 5)) == set(METHODS)
    assert set(plan.methods_for("ddim", 4)) == {
        "untuned",
        "time-shift",
        "ours",
        "ours-full",
        "ours-function",
        "dode",
        "schedule",
        "joint",
    }
    assert (
        set(plan.methods_for("ddim", 20))
        == set(plan.methods_for("heun", 5))
        == {"untuned", "time-shift", "ours", "ours-full", "ours-function"}
    )


def test_table_shows_spread_only_where_several_seeds_ran():
    from timetuner_plugins.experiments.bench import markdown, summarise

    base = dict(
        model="m",
        sampler="ddim",
        nfe=10,
        steps=10,
        schedule="karras",
        fd_untuned=10.0,
        fd_reference=2.0,
        traj_err_untuned=1.0,
        traj_err=0.5,
        tune_seconds=1.0,
    )
    records = [
        dict(base, method="untuned", seed=0, fd=10.0, gap_closed=0.0),
        dict(base, method="ours", seed=0, fd=4.0, gap_closed=0.75),
        dict(base, method="ours", seed=1, fd=6.0, gap_closed=0.5),
        dict(base, method="ours-full", seed=0, fd=3.0, gap_closed=0.875),
    ]
    table = markdown(summarise(records), ["untuned", "ours", "ours-full"])
    row = table.splitlines()[-1]
    assert "FD 5 ± 1.4" in row and "gap 62% ± 18%" in row  # two seeds: mean ± standard deviation
    assert "FD 3<br>gap 88%" in row  # one seed: its value, no invented spread
