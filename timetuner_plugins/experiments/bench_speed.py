"""Speed figures: τ-wrapped sampling against the plain sampler, and default tuning time.

``python -m timetuner_plugins.experiments.bench_speed [--quick]`` prints a table; docs/results.md quotes it.
Timings interleave plain and τ runs and report medians, so drift on a shared machine
affects both sides alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import registry

from ..evaluation.evaluate import eval_noise
from ..sampling.run import eval_sigmas, make_sigmas, run_sampler
from ..devices import resolve_device
from ..sets.tau import TauLookup, TauModel
from ..tuning.tuner import TuneConfig, Tuner


def _clock(device: torch.device) -> float:
    """Wall time after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def overhead(
    model_name: str, sampler: str, steps: int, batch: int, repeats: int, device: torch.device = torch.device("cpu")
) -> dict[str, float]:
    model = registry.load_model(model_name).to(device)
    spec = registry.get_sampler(sampler)
    sigmas = make_sigmas(model, model.default_schedule, steps)
    ev = eval_sigmas(spec, sigmas, model.sample_shape)
    lookup = TauLookup(ev, ev * torch.linspace(1.05, 0.95, len(ev)))  # not identity: the real code path
    x = eval_noise(batch, tuple(model.sample_shape), 0).to(device) * sigmas[0]
    plain, tuned = [], []
    with torch.no_grad():
        for _ in range(2):  # warm-up
            run_sampler(model, spec, x, sigmas)
            run_sampler(model, spec, x, sigmas, lookup=lookup)
        for _ in range(repeats):
            for times, lk in ((plain, None), (tuned, lookup)):
                started = _clock(device)
                run_sampler(model, spec, x, sigmas, lookup=lk)
                times.append(_clock(device) - started)
    p, t = statistics.median(plain), statistics.median(tuned)
    return {"plain_ms": p * 1e3, "tau_ms": t * 1e3, "overhead_pct": (t / p - 1) * 100, "nfe": len(ev)}


def wrapper_cost(batch: int, calls: int = 20000, device: torch.device = torch.device("cpu")) -> float:
    """Microseconds the τ wrapper adds to one evaluation, measured around a model that does nothing
    (end-to-end medians above are within the machine's ±1 % run-to-run noise; this isolates the cost)."""
    x, sigma = torch.zeros(batch, 1, 8, 8, device=device), torch.full((batch,), 3.0, device=device)
    lookup = TauLookup(torch.full((calls,), 3.0), torch.full((calls,), 2.9))
    nothing = lambda x, sigma, cond_sigma=None: x  # noqa: E731
    with torch.no_grad():
        started = _clock(device)
        for _ in range(calls):
            nothing(x, sigma, cond_sigma=sigma)
        plain = _clock(device) - started
        wrapped = TauModel(nothing, lookup)
        started = _clock(device)
        for _ in range(calls):
            wrapped(x, sigma)
        tau = _clock(device) - started
    return (tau - plain) / calls * 1e6


def tuning_time(
    model_name: str,
    sampler: str,
    nfe: int,
    device: torch.device = torch.device("cpu"),
    config: TuneConfig | None = None,
) -> dict[str, float]:
    model = registry.load_model(model_name).to(device)
    sigmas = make_sigmas(model, model.default_schedule, nfe)
    started = _clock(device)
    result = Tuner(model, sampler, sigmas, model.default_schedule, config or TuneConfig(show_progress=False)).tune()
    return {"seconds": _clock(device) - started, "iters": result.config.iters, "nfe": len(result.tau)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    repeats = 5 if args.quick else 31
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} threads")
    print(f"{'model':<12} {'sampler':<9} {'batch':>5} {'NFE':>3} {'plain ms':>9} {'τ ms':>9} {'overhead':>9}")
    for sampler in ("ddim", "dpmpp_2m", "heun"):
        for batch in (64, 1000):
            r = overhead("digits-ddpm", sampler, 10, batch, repeats, device)
            print(
                f"{'digits-ddpm':<12} {sampler:<9} {batch:>5} {r['nfe']:>3} {r['plain_ms']:>9.2f} {r['tau_ms']:>9.2f} "
                f"{r['overhead_pct']:>8.2f}%",
                flush=True,
            )
    per_eval_ms = {64: None, 1000: None}
    for batch in per_eval_ms:
        r = overhead("digits-ddpm", "ddim", 10, batch, 3, device)
        per_eval_ms[batch] = r["plain_ms"] / r["nfe"]
        cost = wrapper_cost(batch, device=device)
        print(
            f"τ wrapper cost per evaluation: {cost:.1f} µs = {cost / 10 / per_eval_ms[batch]:.3f}% of a digits-ddpm "
            f"evaluation at batch {batch} ({per_eval_ms[batch]:.2f} ms)",
            flush=True,
        )
    if not args.quick:
        r = tuning_time("digits-ddpm", "ddim", 10, device)
        print(
            f"tuning digits-ddpm × ddim, NFE {r['nfe']}, default settings ({r['iters']} iterations, teacher "
            f"included): {r['seconds']:.1f} s"
        )


if __name__ == "__main__":
    main()
