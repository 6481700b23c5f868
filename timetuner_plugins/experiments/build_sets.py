"""Build the shipped tuned sets and ``tuned_sets/index.yaml``: ``python -m timetuner_plugins.experiments.build_sets``.

For each bundled model × {ddim, dpmpp_2m, heun, dpm_2, ddpm}: choose the schedule the untuned
sampler does best with at NFE 10 (validation noise), then for NFE {5, 10} tune with the default
settings, measure before/after on evaluation noise, and record the file's sha256 in the index.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import registry

from ..sets import shipped
from ..evaluation.evaluate import choose_schedule
from ..tuning.pipeline import schedule_sigmas, tune_set
from ..tuning.tuner import TuneConfig

MODELS = ("digits-ddpm", "digits-edm", "gmm-digits")
SAMPLERS = ("ddim", "dpmpp_2m", "heun", "dpm_2", "ddpm")
NFES = (5, 10)


def build(
    models=MODELS, samplers=SAMPLERS, nfes=NFES, n: int = 1000, keep_others: bool = True, schedule: str | None = None
) -> None:
    """``schedule=None`` chooses per model × sampler (see the module docstring)."""
    fixed = schedule
    entries = {(e.model, e.sampler, e.schedule, e.nfe): e for e in shipped.entries()} if keep_others else {}
    for model_name in models:
        model = registry.load_model(model_name)
        for sampler in samplers:
            spec = registry.get_sampler(sampler)
            if fixed or model.space == "flow":  # flow models: their own schedule (ComfyUI's simple, their shift)
                schedule = fixed or model.default_schedule
            else:
                schedule, scores = choose_schedule(model, spec, max(nfes))
                print(
                    f"{model_name:<12} {sampler:<9} schedule {schedule} (untuned at NFE {max(nfes)}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
                    + ")",
                    flush=True,
                )
            for nfe in nfes:
                sigmas, _ = schedule_sigmas(model, spec, schedule, nfe=nfe)
                steps = len(sigmas) - 1
                started = time.perf_counter()
                tuned = tune_set(model, spec, sigmas, schedule, TuneConfig(show_progress=False), eval_n=n)
                result, ts, before, after = tuned.result, tuned.tuned_set, tuned.before, tuned.after
                rel = f"{model_name}/{sampler}_{schedule}_nfe{ts.nfe}.safetensors"
                ts.save(shipped.ROOT / rel, overwrite=True)
                entries[(model_name, sampler, schedule, ts.nfe)] = shipped.Entry(
                    file=rel,
                    model=model_name,
                    sampler=sampler,
                    schedule=schedule,
                    steps=steps,
                    nfe=ts.nfe,
                    objective=ts.objective,
                    sha256=shipped.sha256_file(shipped.ROOT / rel),
                    metrics={
                        "fd_untuned": before["fd"],
                        "fd_tuned": after["fd"],
                        "fd_reference": after["fd_reference"],
                        "traj_err_untuned": before["traj_err"],
                        "traj_err_tuned": after["traj_err"],
                        "tune_seconds": round(result.seconds, 1),
                        "identity_fallback": result.selection.get("fallback_identity", False),
                        "schedule_chosen": not fixed,
                    },
                )
                print(
                    f"{model_name:<12} {sampler:<9} NFE {ts.nfe:>2}: FD {before['fd']:.4f} -> {after['fd']:.4f} "
                    f"(ref {after['fd_reference']:.4f}), traj {before['traj_err']:.4f} -> {after['traj_err']:.4f}, "
                    f"tuned in {result.seconds:.0f} s ({time.perf_counter() - started:.0f} s with evaluation)",
                    flush=True,
                )
                shipped.write_index(sorted(entries.values(), key=lambda e: (e.model, e.sampler, e.schedule, e.nfe)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES))
    parser.add_argument("--n", type=int, default=1000, help="evaluation samples")
    parser.add_argument("--schedule", default=None, help="a fixed schedule instead of the per-sampler choice")
    parser.add_argument(
        "--table",
        type=Path,
        default=None,
        metavar="FILE",
        help="only rewrite the shipped-sets table in FILE (between <!-- sets:start/end -->)",
    )
    args = parser.parse_args()
    if args.table:
        shipped.update_table(args.table)
        print(f"updated {args.table}")
        return
    build(args.models, args.samplers, args.nfe, args.n, schedule=args.schedule)


if __name__ == "__main__":
    main()
