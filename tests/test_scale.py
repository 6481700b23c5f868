"""Real-scale tuning: recomputed activations, micro-batches and data-parallel processes give the same τ."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import registry
from timetuner_plugins.adapters.denoisers import set_network_dtype
from timetuner_plugins.tuning.parallel import ShardError, Shards
from timetuner_plugins.sampling.run import make_sigmas
from timetuner_plugins.sets.tuned_set import TunedSet
from timetuner_plugins.tuning.tuner import TuneConfig, Tuner

SMALL = dict(iters=4, batch=16, pool=32, val_size=32, teacher_substeps=3, validate_every=2, show_progress=False)


def _tau(model, sampler, steps=3, **overrides):
    sigmas = make_sigmas(model, "logsnr", steps)
    return Tuner(model, sampler, sigmas, "logsnr", TuneConfig(**{**SMALL, **overrides})).tune()


def test_recompute_gives_the_same_gradients_and_tau(ddpm):
    stored = _tau(ddpm, "dpmpp_2m", recompute="off")
    recomputed = _tau(ddpm, "dpmpp_2m", recompute="on")
    assert stored.losses == recomputed.losses and torch.equal(stored.tau, recomputed.tau)


@pytest.mark.parametrize(
    "sampler,overrides",
    [
        ("ddim", {}),  # energy in the tuning classifier's features? gmm: pixels; selection on
        ("ddpm", {}),  # stochastic: a micro-batch draws exactly its rows' noise
        ("heun", {"objective": "trajectory", "select": False}),
        ("dpmpp_2m", {"objective": "final", "select": False}),
        ("ddim", {"objective": "paper", "param": "t_ratio", "lr": 0.01, "select": False, "iters": 2}),
    ],
)
def test_micro_batches_give_the_whole_batch_result(gmm, sampler, overrides):
    whole = _tau(gmm, sampler, **overrides)
    parts = _tau(gmm, sampler, micro_batch=5, **overrides)  # 5 + 5 + 5 + 1 rows
    torch.testing.assert_close(parts.tau, whole.tau, rtol=1e-5, atol=0)
    assert parts.losses == pytest.approx(whole.losses, rel=1e-5)


def test_a_half_precision_network_tunes_close_to_float32():
    full = registry.load_model("digits-ddpm")
    half = set_network_dtype(registry.load_model("digits-ddpm"), "bfloat16")
    assert half.fingerprint == full.fingerprint  # the set applies to the model as loaded
    a, b = _tau(full, "ddim", steps=4, select=False), _tau(half, "ddim", steps=4, select=False)
    assert next(half.net.parameters()).dtype == torch.bfloat16 and b.tau.dtype == torch.float32
    torch.testing.assert_close(b.tau, a.tau, rtol=0.02, atol=0)


def _rank(
    rank: int, world: int, init: str, sampler: str, out: str, disagree: bool, stop_at: int | None, resume: bool
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        model = registry.load_model("gmm-digits")
        seed = 1 if disagree and rank == 1 else 0
        sigmas = make_sigmas(model, "logsnr", 3)
        config = TuneConfig(**{**SMALL, "checkpoint_every": 1}, seed=seed)
        try:
            tuner = Tuner(model, sampler, sigmas, "logsnr", config, checkpoint=f"{out}.ckpt")
        except ShardError as exc:
            torch.save({"error": str(exc)}, f"{out}.{rank}")
            return
        if stop_at is not None:  # an interrupt at one iteration, on every rank (as torchrun forwards Ctrl-C)
            step = tuner.strategy.step
            tuner.strategy.step = lambda p, it: (
                (_ for _ in ()).throw(KeyboardInterrupt) if it == stop_at else step(p, it)
            )
            try:
                tuner.tune()
            except KeyboardInterrupt:
                return
        result = tuner.tune(resume=resume)
        torch.save({"tau": result.tau, "losses": result.losses}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn(
    tmp_path: Path, sampler: str, disagree: bool = False, stop_at: int | None = None, resume: bool = False
) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "result"
    init = tmp_path / f"init-{stop_at}-{resume}"
    mp.spawn(_rank, args=(2, str(init), sampler, str(out), disagree, stop_at, resume), nprocs=2, join=True)
    return [] if stop_at is not None else [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_two_gloo_processes_give_the_one_process_tau(gmm, tmp_path, sampler):
    one = _tau(gmm, sampler)
    ranks = _spawn(tmp_path, sampler)
    assert torch.equal(ranks[0]["tau"], ranks[1]["tau"])  # the ranks stay in step
    torch.testing.assert_close(ranks[0]["tau"], one.tau, rtol=1e-5, atol=0)


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_to_the_same_tau(tmp_path):
    whole = _spawn(tmp_path / "a", "ddim")
    _spawn(tmp_path / "b", "ddim", stop_at=3)
    assert (tmp_path / "b" / "result.ckpt").exists()  # written by rank 0
    resumed = _spawn(tmp_path / "b", "ddim", resume=True)
    assert torch.equal(resumed[0]["tau"], whole[0]["tau"]) and resumed[0]["losses"] == whole[0]["losses"]


def test_ranks_that_disagree_stop_with_the_reason(tmp_path):
    ranks = _spawn(tmp_path, "ddim", disagree=True)
    assert all("processes disagree" in r["error"] for r in ranks)


def test_batch_must_split_evenly_over_processes():
    with pytest.raises(ShardError, match="multiple of 3"):
        Shards(rank=0, world=3).check(16)


@pytest.mark.slow
def test_torchrun_tune_writes_one_set_equal_to_one_process(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIMETUNER_CACHE": str(tmp_path / "cache")}
    args = [
        "tune",
        "--model",
        "gmm-digits",
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--iters",
        "6",
        "--batch",
        "16",
        "--eval-n",
        "0",
        "--quiet",
        "--patience",
        "0",
    ]
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run(
        [sys.executable, "-m", "timetuner_plugins", *args, "--out", str(single)],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "timetuner_plugins",
            *args,
            "--out",
            str(double),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote") == 1 and sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "one.safetensors",
        "two.safetensors",
    ]
    torch.testing.assert_close(TunedSet.load(double).tau, TunedSet.load(single).tau, rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", ["sd15", "sdxl", "sd3", "flux"])
def test_the_fake_tensor_memory_count_equals_a_real_run(name):
    """bench-scale --estimate counts SDXL/SD3/Flux on fake tensors; on the tiny configs the same count run on real
    tensors gives the same bytes, and storing K evaluations costs K times what recompute keeps per evaluation."""
    pytest.importorskip("diffusers")
    from timetuner_plugins.experiments import bench_scale as bs

    fake = bs.estimate(name, 8, 2, "float32", size="tiny")
    real = bs.estimate(name, 8, 2, "float32", size="tiny", fake=False)
    assert fake == pytest.approx(real, rel=1e-6) and real["saved_per_evaluation_gb"] > 0
    assert fake["forward_backward_peak_gb"] >= fake["saved_per_evaluation_gb"]
    rounded = {k: round(v, 3) for k, v in bs.estimate("sd15", 32, 2, "float32", size="tiny").items()}
    low, high = bs.projected(rounded, 4), bs.projected(rounded, 16)
    assert high["recompute_gb"] == low["recompute_gb"] and high["store_gb"] >= low["store_gb"]


def test_each_point_records_its_allocator_and_a_missing_one_is_named(tmp_path):
    """bench-scale's points run in their own processes with the allocator asked for; the record says which one
    served the process (read from its memory map), and an allocator that is not there is refused up front."""
    import ctypes.util

    from click.testing import CliRunner

    from timetuner_plugins.experiments import bench_scale as bs
    from timetuner_plugins.cli import cli

    code = "from timetuner_plugins.experiments.bench_scale import allocator; print(allocator())"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("LD_PRELOAD", None)
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert plain.stdout.strip() == "glibc"
    assert bs.preload("system") == {}
    missing = CliRunner().invoke(cli, ["bench-scale", "--allocator", str(tmp_path / "no.so"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "no such file" in missing.output
    found = ctypes.util.find_library("jemalloc")
    if found is None:
        refused = CliRunner().invoke(cli, ["bench-scale", "--allocator", "jemalloc", "--out", str(tmp_path)])
        assert refused.exit_code == 2 and "apt install libjemalloc2" in refused.output
    else:
        served = subprocess.run(
            [sys.executable, "-c", code], env={**env, **bs.preload("jemalloc")}, capture_output=True, text=True
        )
        assert served.stdout.strip() == "jemalloc"
