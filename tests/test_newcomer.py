"""What a newcomer meets: output paths checked first, options never ignored, no silent phases, clear help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import registry
from timetuner_plugins.experiments import plots
from timetuner_plugins.sets import shipped
from timetuner_plugins.cli import cli
from timetuner_plugins.evaluation.evaluate import generate
from timetuner_plugins.sampling.run import make_sigmas
from timetuner_plugins.sets.tuned_set import TunedSet
from timetuner_plugins.tuning.tuner import Tuner

from helpers import interruptible, noise

QUICK = [
    "--model",
    "gmm-digits",
    "--sampler",
    "ddim",
    "--steps",
    "3",
    "--iters",
    "2",
    "--batch",
    "8",
    "--eval-n",
    "0",
    "--quiet",
]


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_missing_output_folder_stops_before_any_work(runner, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(Tuner, "tune", lambda *a, **k: started.append(1))
    out = runner.invoke(cli, ["tune", *QUICK, "--out", str(tmp_path / "nodir" / "x.safetensors")])
    assert out.exit_code == 1 and not started
    assert "folder" in out.output and "does not exist" in out.output and "mkdir -p" in out.output
    assert "Traceback" not in out.output and out.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["bench", "--quick"], ["demo"], ["stitch"]])
def test_folder_outputs_that_are_files_stop_at_once(runner, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = runner.invoke(cli, [*command, "--out", str(blocker / "sub")])
    assert out.exit_code == 1 and "is a file" in out.output and "Traceback" not in out.output
    out = runner.invoke(cli, [*command, "--out", str(blocker)])
    assert out.exit_code != 0 and "is a file" in out.output  # click or our check: one line either way


def test_bench_checks_the_readme_it_would_update(runner, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no generated section here\n")
    out = runner.invoke(cli, ["bench", "--quick", "--out", str(tmp_path / "b"), "--update-readme", str(readme)])
    assert out.exit_code == 1 and "no <!-- bench:start -->" in out.output
    assert not (tmp_path / "b").exists()


def test_unknown_sampler_option_is_refused_naming_the_accepted_ones(runner, tmp_path, gmm):
    out = runner.invoke(cli, ["tune", *QUICK, "--option", "bogus=1", "--out", str(tmp_path / "x.safetensors")])
    assert out.exit_code == 1 and "'bogus'" in out.output and "takes no options" in out.output
    out = runner.invoke(
        cli,
        [
            "tune",
            "--model",
            "gmm-digits",
            "--sampler",
            "ddpm",
            "--steps",
            "3",
            "--option",
            "etta=0.5",
            "--out",
            str(tmp_path / "y.safetensors"),
        ],
    )
    assert out.exit_code == 1 and "'etta'" in out.output and "eta" in out.output and "s_noise" in out.output
    assert not list(tmp_path.iterdir())
    with pytest.raises(registry.SamplerOptionError, match="bogus"):
        Tuner(gmm, "ddim", make_sigmas(gmm, "logsnr", 3), options={"bogus": 1})


@pytest.fixture(scope="module")
def early_stopped(tmp_path_factory):
    """A CLI tune whose early stop ends it before its configured iterations (with its own, empty cache)."""
    root = tmp_path_factory.mktemp("early")
    path = root / "set.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIMETUNER_CACHE", str(root / "cache"))
        out = CliRunner().invoke(
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
                "200",
                "--batch",
                "8",
                "--patience",
                "1",
                "--eval-n",
                "40",
                "--out",
                str(path),
            ],
        )
    assert out.exit_code == 0, out.output
    return path, out.output


def test_early_stop_is_said_and_recorded(runner, early_stopped):
    path, output = early_stopped
    ts = TunedSet.load(path)
    stopped = ts.extra["selection"]["stopped_early_at"]
    assert stopped and stopped < 200 and ts.extra["iterations_run"] == stopped and ts.iterations == 200
    assert f"stopped early at iteration {stopped} of 200" in output
    shown = runner.invoke(cli, ["inspect", str(path)]).output
    assert f"stopped early: {stopped} of 200 iterations" in shown


def test_tune_says_what_it_does_after_the_progress_bar(early_stopped):
    _, output = early_stopped
    assert "evaluating untuned and tuned on 40 samples" in output
    assert "500-NFE ddim reference, 40 samples (once; cached in" in output  # a bar while the reference computes


def test_generate_shows_a_bar_only_when_asked(gmm, capsys):
    spec = registry.get_sampler("ddim")
    sigmas = make_sigmas(gmm, "logsnr", 4)
    quiet = generate(gmm, spec, sigmas, noise(6))
    assert capsys.readouterr().err == ""
    shown = generate(gmm, spec, sigmas, noise(6), progress="label here")
    assert "label here" in capsys.readouterr().err and torch.equal(quiet, shown)


def test_eval_honours_sampler_steps_and_schedule_through_the_mismatch_check(runner, early_stopped):
    path, _ = early_stopped
    for extra, needle in (
        (["--sampler", "dpmpp_2m"], "tuned for sampler 'ddim' but the run uses 'dpmpp_2m'"),
        (["--steps", "4"], "3 steps"),
        (["--schedule", "karras"], "the run's σ's are"),
    ):
        out = runner.invoke(cli, ["eval", "--tuned", str(path), "--n", "20", *extra])
        assert out.exit_code == 1 and needle in out.output and "--force" in out.output, out.output
    out = runner.invoke(cli, ["eval", "--tuned", str(path), "--n", "20", "--schedule", "karras", "--force", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["schedule"] == "karras"


@pytest.mark.skipif("k_diffusion.lms" in registry.samplers(), reason="k-diffusion is installed here")
def test_sets_that_need_an_extra_say_how_to_get_it(runner):
    entry = next(e for e in shipped.entries() if e.sampler.startswith("k_diffusion."))
    out = runner.invoke(cli, ["eval", "--tuned", str(entry.path), "--n", "20"])
    assert out.exit_code == 1 and "pip install 'timetuner[k-diffusion]'" in out.output
    listing = runner.invoke(cli, ["inspect"]).output
    line = next(line for line in listing.splitlines() if entry.file in line)
    assert "(sampler not available here)" in line and "note: k-diffusion samplers unavailable" in listing
    assert "sampler not available here: k-diffusion" in runner.invoke(cli, ["inspect", str(entry.path)]).output


def test_help_names_schedules_and_every_option(runner):
    commands = runner.invoke(cli, ["--help"]).output.split("Commands:")[1]
    assert "..." not in commands and "stitch" in commands and "schedules" in commands
    listing = runner.invoke(cli, ["schedules"]).output
    assert all(name in listing for name in registry.schedules())
    tune_help = runner.invoke(cli, ["tune", "--help"]).output
    assert "timetuner schedules" in tune_help and "log_ratio" in tune_help and "Seed of the tuning" in tune_help


def test_fd_plot_never_joins_points_across_unmeasured_nfes():
    assert plots.measured_runs([5, 10], [4, 5, 6, 8, 10, 15, 20]) == [[0], [1]]
    assert plots.measured_runs([6, 4, 5, 10], [4, 5, 6, 8, 10]) == [[1, 2, 0], [3]]


def test_ctrl_c_closes_the_bars_before_its_one_line_message(tmp_path):
    out = tmp_path / "x.safetensors"
    ckpt = Path(str(out) + ".ckpt")
    env = {**os.environ, "TIMETUNER_CACHE": str(tmp_path / "cache")}
    cmd = [
        sys.executable,
        "-m",
        "timetuner_plugins",
        "tune",
        "--model",
        "gmm-digits",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--iters",
        "300",
        "--batch",
        "16",
        "--eval-n",
        "0",
        "--patience",
        "0",
        "--checkpoint-every",
        "5",
        "--out",
        str(out),
    ]
    proc = interruptible(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    head, message = err.rsplit("Error: interrupted", 1)
    assert head.endswith("\n"), "the message was printed onto the progress bar's line"
    assert "\r" not in message and message.count("\n") == 1, "a bar was drawn after the message"
    assert "tune ddim" in head  # the bar was shown, and closed


def test_the_command_reference_lists_every_command():
    listed = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    missing = [name for name in cli.commands if f"timetuner {name} " not in listed]
    assert not missing, f"docs/cli.md does not list {missing}"
