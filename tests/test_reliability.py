"""Faults: racing writers, a tuning run killed with SIGKILL and resumed, out of memory, tampered index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from timetuner_plugins.sets import shipped
from timetuner_plugins.cli import cli
from timetuner_plugins.sets.tuned_set import TunedSet, TunedSetError
from timetuner_plugins.tuning.tuner import TuneConfig, TuneError, Tuner
from timetuner_plugins.sampling.run import make_sigmas

from helpers import interruptible, make_set


def test_racing_writers_never_leave_a_corrupt_file(tmp_path):
    path = tmp_path / "race.safetensors"
    for overwrite in (False, True):
        path.unlink(missing_ok=True)
        results, barrier = [], threading.Barrier(8)

        def write(seed):
            barrier.wait()
            try:
                make_set(seed=seed).save(path, overwrite=overwrite)
                results.append(("ok", seed))
            except FileExistsError:
                results.append(("exists", seed))

        threads = [threading.Thread(target=write, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [s for r, s in results if r == "ok"]
        assert len(winners) == (8 if overwrite else 1)
        assert TunedSet.load(path).seed in winners  # a whole file from one writer
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


TUNE = [
    sys.executable,
    "-m",
    "timetuner_plugins",
    "tune",
    "--model",
    "gmm-digits",
    "--sampler",
    "dpmpp_2m",
    "--steps",
    "4",
    "--iters",
    "300",
    "--batch",
    "16",
    "--seed",
    "3",
    "--eval-n",
    "0",
    "--quiet",
    "--checkpoint-every",
    "5",
    "--patience",
    "0",
]  # every iteration runs: an early stop would shorten the window


def _tau(path: Path) -> torch.Tensor:
    return TunedSet.load(path).tau


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """τ of an uninterrupted run, and the environment (shared reference cache) the other runs use."""
    root = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, "TIMETUNER_CACHE": str(root / "cache")}
    full = root / "full.safetensors"
    subprocess.run(TUNE + ["--out", str(full)], check=True, env=env, capture_output=True, timeout=1200)
    return _tau(full), env


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    full_tau, env = uninterrupted

    out = tmp_path / "killed.safetensors"
    ckpt = Path(str(out) + ".ckpt")
    proc = subprocess.Popen(TUNE + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run on past the checkpoint, so work is lost and redone
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert ckpt.exists() and not out.exists()

    again = subprocess.run(TUNE + ["--out", str(out)], env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "--resume" in again.stderr
    subprocess.run(TUNE + ["--out", str(out), "--resume"], check=True, env=env, capture_output=True, timeout=600)
    assert torch.equal(_tau(out), full_tau)
    assert not ckpt.exists()


@pytest.mark.slow
def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    full_tau, env = uninterrupted
    out = tmp_path / "stopped.safetensors"
    ckpt = Path(str(out) + ".ckpt")
    proc = interruptible(
        TUNE + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert ckpt.exists() and not out.exists()
    subprocess.run(TUNE + ["--out", str(out), "--resume"], check=True, env=env, capture_output=True, timeout=600)
    assert torch.equal(_tau(out), full_tau)


class _Hungry(torch.nn.Module):
    """Stands in for a model that runs out of memory above a batch size."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit = inner, limit
        for attr in ("sigma_min", "sigma_max", "sample_shape", "model_id", "sigma_to_t", "t_to_sigma"):
            setattr(self, attr, getattr(inner, attr))
        self.fingerprint = inner.fingerprint

    def forward(self, x, sigma, cond_sigma=None, **extra):
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.inner(x, sigma, cond_sigma=cond_sigma, **extra)


def test_out_of_memory_names_micro_batches_and_they_fix_it(gmm, tmp_path):
    model = _Hungry(gmm, limit=40)
    sigmas = make_sigmas(gmm, "logsnr", 3)
    ckpt = tmp_path / "x.ckpt"
    small = dict(batch=64, pool=64, val_size=64, iters=3, show_progress=False)
    with pytest.raises(TuneError, match=r"out of memory at 64 rows per pass.*--micro-batch 32.*--batch 32"):
        Tuner(model, "ddim", sigmas, config=TuneConfig(**small), checkpoint=ckpt).tune()
    assert not ckpt.exists()
    fits = Tuner(model, "ddim", sigmas, config=TuneConfig(**small, micro_batch=32)).tune()
    whole = Tuner(gmm, "ddim", sigmas, config=TuneConfig(**small)).tune()
    torch.testing.assert_close(fits.tau, whole.tau, rtol=1e-5, atol=0)


def test_cli_out_of_memory_leaves_no_file(tmp_path, monkeypatch):
    def boom(self, resume, progress):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(Tuner, "_tune", boom)
    out = tmp_path / "oom.safetensors"
    result = CliRunner().invoke(
        cli,
        [
            "tune",
            "--model",
            "gmm-digits",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--batch",
            "512",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 1 and "--micro-batch 256" in result.output and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_shipped_sets_are_checked_against_the_index(tmp_path, monkeypatch):
    entries = shipped.entries()
    assert entries, "the package ships tuned sets"
    for entry in entries:
        assert shipped.load(entry).sampler == entry.sampler
    entry = entries[0]
    copy = tmp_path / entry.file
    copy.parent.mkdir(parents=True)
    data = bytearray(entry.path.read_bytes())
    data[-1] ^= 1  # one bit in the τ tensor
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(shipped, "ROOT", tmp_path)
    with pytest.raises(TunedSetError, match="sha256"):
        shipped.load(entry)
    raw = yaml.safe_load(shipped.INDEX.read_text())
    assert {"file", "sha256", "model", "sampler", "nfe"} <= set(raw["sets"][0])
