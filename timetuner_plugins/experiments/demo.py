"""``timetuner demo``: the shipped τ sets against the plain samplers on digits-ddpm."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from tqdm.auto import tqdm

import registry

from . import plots
from ..sets import shipped
from ..evaluation.evaluate import EVAL_SEED, cache_dir, eval_noise, evaluate, generate, reference
from ..tuning.pipeline import schedule_sigmas, tune_set
from ..sampling.run import make_sigmas
from ..sets.tuned_set import TunedSet

MODEL = "digits-ddpm"
CASES = [("ddim", 5), ("ddim", 10), ("dpmpp_2m", 5), ("dpmpp_2m", 10)]
CURVE_NFE = [4, 5, 6, 8, 10, 15, 20]


def _tuned_set(model: Any, sampler: str, nfe: int, schedule: str, retune: bool) -> TunedSet:
    if not retune:
        return shipped.load(shipped.find(MODEL, sampler, nfe=nfe))
    sigmas, schedule = schedule_sigmas(model, sampler, schedule, nfe=nfe)
    return tune_set(model, sampler, sigmas, schedule, eval_n=0).tuned_set


def _gap(untuned: dict, tuned: dict) -> float | None:
    """Share of the FD gap to the 500-NFE reference closed; None when the untuned run is already there."""
    gap = untuned["fd"] - untuned["fd_reference"]
    return (untuned["fd"] - tuned["fd"]) / gap if gap > 0 else None


def _panel(model: Any, spec: Any, ts: TunedSet, sigmas: Any, noise: Any, untuned: dict, tuned: dict) -> dict:
    """The demo picture's rows for one case: reference, plain, tuned, and each one's distance to the reference."""
    ref = reference(model, spec, ts.schedule, noise, start_sigma=float(ts.sigmas[0]))
    plain = generate(model, spec, sigmas, noise)
    mine = generate(model, spec, sigmas, noise, lookup=ts.lookup())
    err = lambda x: ((x - ref) ** 2).flatten(1).mean(1).sqrt().mean().item()  # noqa: E731
    return {
        "500-NFE reference": (ref, "sample"),
        f"untuned\nFD {untuned['fd']:.0f}": (plain, "sample"),
        f"tuned\nFD {tuned['fd']:.0f}": (mine, "sample"),
        f"|untuned − ref|\nRMS {err(plain):.3f}": ((plain - ref).abs(), "error"),
        f"|tuned − ref|\nRMS {err(mine):.3f}": ((mine - ref).abs(), "error"),
    }


def run_demo(out: Path, retune: bool = False, n: int = 1000) -> dict[str, Any]:
    started = time.perf_counter()
    say = lambda text: click.echo(text, err=True)  # noqa: E731  progress lines go beside the bars, on stderr
    model = registry.load_model(MODEL)
    rows, grid, curves, schedules = [], {}, {}, {}
    grid_noise = eval_noise(8, tuple(model.sample_shape), EVAL_SEED + 1)
    say(
        f"demo: {MODEL}, {n} samples per run; 500-NFE reference runs are computed once and cached in {cache_dir()} "
        f"(set TIMETUNER_CACHE to move it)"
    )
    for sampler, nfe in CASES:
        spec = registry.get_sampler(sampler)
        say(
            f"{sampler} at NFE {nfe}: "
            + ("tuning a set (about a minute)" if retune else "shipped tuned set")
            + ", then untuned and tuned runs"
        )
        ts = _tuned_set(model, sampler, nfe, model.default_schedule, retune)
        sigmas = make_sigmas(model, ts.schedule, ts.steps)
        ts.check(model=model, sampler=sampler, sigmas=sigmas)
        schedules[sampler] = ts.schedule
        untuned = evaluate(model, spec, sigmas, ts.schedule, n=n, options=ts.sampler_options, progress=True)
        tuned = evaluate(
            model, spec, sigmas, ts.schedule, n=n, options=ts.sampler_options, lookup=ts.lookup(), progress=True
        )
        rows.append(
            {
                "sampler": sampler,
                "schedule": ts.schedule,
                "nfe": tuned["nfe"],
                "untuned": untuned,
                "tuned": tuned,
                "gap_closed": _gap(untuned, tuned),
                "identity": ts.lookup().is_identity(),
                "tuned_set": str(ts.path) if ts.path else "retuned",
            }
        )
        grid[f"{sampler}, NFE {tuned['nfe']}"] = _panel(model, spec, ts, sigmas, grid_noise, untuned, tuned)
    for sampler, schedule in schedules.items():
        spec = registry.get_sampler(sampler)
        say(f"FD of the untuned {sampler} at NFE {', '.join(map(str, CURVE_NFE))} (the curve in fd_vs_nfe.png)")
        fds = [
            evaluate(model, spec, make_sigmas(model, schedule, k), schedule, n=n, progress=True)["fd"]
            for k in tqdm(CURVE_NFE, desc=f"{sampler} curve", unit="NFE", leave=False)
        ]
        curves[f"{sampler} untuned ({schedule})"] = (CURVE_NFE, fds)
        mine = [r for r in rows if r["sampler"] == sampler]
        curves[f"{sampler} tuned (shipped NFEs)"] = ([r["nfe"] for r in mine], [r["tuned"]["fd"] for r in mine])
    out.mkdir(parents=True, exist_ok=True)
    plots.comparison_grid(grid, out / "samples.png")
    plots.fd_vs_nfe(
        curves,
        out / "fd_vs_nfe.png",
        reference=rows[0]["untuned"]["fd_reference"],
        title=f"{MODEL}: FD vs NFE ({n} samples)",
    )
    summary = {
        "model": MODEL,
        "n": n,
        "rows": rows,
        "curves": {k: {"nfe": list(v[0]), "fd": v[1]} for k, v in curves.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    click.echo(f"{MODEL}, {n} samples from noise no set was tuned on; FD against held-out digits, lower is better")
    click.echo(
        f"{'sampler':<9} {'schedule':<11} {'NFE':>3} {'FD untuned':>10} {'FD tuned':>9} {'FD ref':>7} "
        f"{'gap closed':>10} {'traj untuned':>12} {'traj tuned':>10} {'s untuned':>9} {'s tuned':>7}"
    )
    for r in rows:
        u, t = r["untuned"], r["tuned"]
        gap = "at ref" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}"
        gap += "*" if r["identity"] else ""
        click.echo(
            f"{r['sampler']:<9} {r['schedule']:<11} {r['nfe']:>3} {u['fd']:>10.2f} {t['fd']:>9.2f} "
            f"{u['fd_reference']:>7.2f} {gap:>10} {u['traj_err']:>12.4f} {t['traj_err']:>10.4f} "
            f"{u['seconds']:>9.3f} {t['seconds']:>7.3f}"
        )
    if any(r["identity"] for r in rows):
        click.echo("* the set is the identity: tuning did not validate better than the plain sampler")
    click.echo(
        f"wrote {out / 'samples.png'}, {out / 'fd_vs_nfe.png'}, {out / 'results.json'} in {summary['seconds']:.0f} s"
    )
    return summary
