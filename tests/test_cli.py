"""The command line: listings, tune → inspect → eval, and errors a user can act on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from timetuner_plugins.cli import cli


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_samplers_and_models_json(runner):
    out = runner.invoke(cli, ["samplers", "--json"])
    assert out.exit_code == 0, out.output
    names = {row["name"] for row in json.loads(out.output)["samplers"]}
    assert {"ddim", "ddpm", "heun", "dpm_2", "dpmpp_2m"} <= names
    out = runner.invoke(cli, ["models", "--json"])
    assert {"digits-ddpm", "digits-edm", "gmm-digits"} <= {row["name"] for row in json.loads(out.output)}


@pytest.fixture(scope="module")
def tuned_file(runner, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "gmm_ddim.safetensors"
    out = runner.invoke(
        cli,
        [
            "tune",
            "--model",
            "gmm-digits",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--iters",
            "4",
            "--batch",
            "8",
            "--eval-n",
            "40",
            "--seed",
            "1",
            "--out",
            str(path),
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "wrote" in out.output and "untuned" in out.output
    return path


def test_tune_inspect_eval(runner, tuned_file):
    out = runner.invoke(cli, ["inspect", str(tuned_file)])
    assert out.exit_code == 0 and "sampler ddim" in out.output and "τ/σ" in out.output
    report = json.loads(runner.invoke(cli, ["inspect", "--json", str(tuned_file)]).output)[0]
    assert report["nfe"] == "3" and report["metrics_after"]["nfe"] == 3
    said = report["verdict"]  # what the set does to FD and trajectory error, measured at tune time
    assert said and "FD" in said and "trajectory error" in said and report["extra"]["verdict"] == said
    assert f"measured on evaluation noise: {said}" in out.output
    checks = report["extra"]["teacher_check"]  # the teacher's convergence check, as recorded and as said
    assert checks and report["extra"]["teacher_substeps"] in (checks[-1]["substeps"], 2 * checks[-1]["substeps"])
    assert f"teacher: {report['extra']['teacher_substeps']} substeps per step" in out.output
    out = runner.invoke(cli, ["eval", "--tuned", str(tuned_file), "--n", "40", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    for key in ("fd", "traj_err", "nfe", "seconds"):
        assert key in data
    assert data["nfe"] == 3 and data["untuned"]["nfe"] == 3


def test_tune_never_overwrites_without_the_flag(runner, tuned_file):
    before = tuned_file.read_bytes()
    out = runner.invoke(
        cli,
        [
            "tune",
            "--model",
            "gmm-digits",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--iters",
            "1",
            "--eval-n",
            "0",
            "--out",
            str(tuned_file),
            "--quiet",
        ],
    )
    assert out.exit_code == 1 and "--overwrite" in out.output
    assert tuned_file.read_bytes() == before


def test_mismatched_set_is_refused_unless_forced(runner, tuned_file):
    out = runner.invoke(cli, ["eval", "--tuned", str(tuned_file), "--model", "digits-ddpm", "--n", "20"])
    assert out.exit_code == 1 and "tuned for model 'gmm-digits'" in out.output and "--force" in out.output
    out = runner.invoke(cli, ["eval", "--tuned", str(tuned_file), "--model", "digits-ddpm", "--n", "20", "--force"])
    assert out.exit_code == 0, out.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["tune", "--model", "gmm-digits", "--sampler", "dpmpp2m", "--steps", "3"], "Did you mean: dpmpp_2m"),
        (["tune", "--model", "digits", "--sampler", "ddim", "--steps", "3"], "unknown model 'digits'"),
        (
            ["tune", "--model", "gmm-digits", "--sampler", "ddim", "--steps", "3", "--schedule", "cosine"],
            "unknown schedule",
        ),
        (["tune", "--model", "gmm-digits", "--sampler", "ddim"], "exactly one of --steps"),
        (["inspect", "nowhere.safetensors"], "no such file"),
    ],
)
def test_errors_name_the_problem(runner, args, needle):
    out = runner.invoke(cli, args)
    assert out.exit_code != 0 and needle in out.output
    assert "Traceback" not in out.output


def test_installed_entry_points_run():
    exe = Path(sys.executable).parent / "timetuner"
    assert exe.exists(), "the timetuner console script is not installed beside the interpreter"
    proc = subprocess.run([exe, "samplers"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "dpmpp_2m" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "timetuner_plugins", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "timetuner" in proc.stdout
