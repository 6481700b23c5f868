"""``timetuner bench``: every method side by side on the bundled models, with fixed seeds.

For each model × sampler × NFE: the schedule the untuned sampler does best with (chosen on
validation noise; flow models keep their own, ComfyUI's ``simple`` at the model's shift), a 500-NFE reference from the evaluation noise, then each method tuned with
several seeds and evaluated on the evaluation noise, which no method sees while tuning.
Writes ``results.json``, ``results.md`` and PNG plots; ``--quick`` is a CI-sized smoke run.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

import registry

from . import plots
from ..evaluation.evaluate import EVAL_SEED, choose_schedule, eval_noise, evaluate, generate, reference
from ..evaluation.metrics import fd_metric, trajectory_error
from ..sampling.run import make_sigmas, steps_for_nfe
from ..sets.tau import TauLookup
from ..sampling.time_shift import TimeShift
from ..tuning.pipeline import tune_set
from ..tuning.tuner import NoiseSet, TuneConfig

METHODS: dict[str, Callable[[int], TuneConfig | TimeShift | None]] = {
    "untuned": lambda seed: None,
    "time-shift": lambda seed: TimeShift(),
    "paper-seq": lambda seed: TuneConfig.paper("sequential", seed=seed, show_progress=False),
    "paper-par": lambda seed: TuneConfig.paper("parallel", seed=seed, show_progress=False),
    "final": lambda seed: TuneConfig(objective="final", select=False, seed=seed, show_progress=False),
    "trajectory": lambda seed: TuneConfig(objective="trajectory", select=False, seed=seed, show_progress=False),
    "energy": lambda seed: TuneConfig(objective="energy", select=False, seed=seed, show_progress=False),
    "ours": lambda seed: TuneConfig(seed=seed, show_progress=False),
    "ours-classifier": lambda seed: TuneConfig(
        features="tuning_features", select_by="fd", seed=seed, show_progress=False
    ),
    "ours-real": lambda seed: TuneConfig(data="real", seed=seed, show_progress=False),
    "dode": lambda seed: TuneConfig(
        objective="trajectory", families=("dode",), select=False, seed=seed, show_progress=False
    ),
    "schedule": lambda seed: TuneConfig(families=("sigma",), seed=seed, show_progress=False),
    "joint": lambda seed: TuneConfig(families=("tau", "sigma"), seed=seed, show_progress=False),
    "ours-full": lambda seed: TuneConfig(families=("tau", "dode", "sigma"), seed=seed, show_progress=False),
    "ours-function": lambda seed: TuneConfig(seed=seed, show_progress=False),
}
FUNCTION_METHODS = ("ours-function",)  # one τ function per model × sampler × seed, over the plan's NFE range
DESCRIPTIONS = {
    "untuned": "the plain sampler",
    "time-shift": "Li et al. 2024, training-free: per-sample variance-matched timestep, window 20, σ > 1",
    "paper-seq": "Xia et al. 2024 as published: per-interval ε-consistency, t-ratio, Adam 2e-3, 500 it, sequential",
    "paper-par": "the same, parallel mode (x_t from the forward process)",
    "final": "all τ jointly, squared error to the teacher's final sample",
    "trajectory": "all τ jointly, squared error to the teacher's states at every σ",
    "energy": "all τ jointly, energy distance to the teacher's samples",
    "ours": "energy distance on the samples + held-out selection by the objective, trajectory guard and identity "
    "fallback (the default: needs nothing but the model)",
    "ours-classifier": "the earlier default: energy distance in a digits classifier's features, selection by FD "
    "(bundled digits models only)",
    "ours-real": "as ours, energy distance to real data instead of the teacher",
    "dode": "D-ODE (Kim et al. 2024): one λ per evaluation, D̃ = D + λ(D − D_prev), distilled from the same "
    "solver's run on a finer schedule (teacher states; gradient fit, not the paper's closed form)",
    "schedule": "the schedule's interior σ's alone, trained like ours (energy + selection)",
    "joint": "τ and the schedule's σ's together, trained like ours",
    "ours-full": "τ, D-ODE λ and the schedule's σ's together, trained like ours (needs the set's own σ's and a "
    "host that counts evaluations)",
    "ours-function": "one τ function over the plan's NFE range (trained on NFE 4, 5, 6, 8, 10, 13, 16, 20 within "
    "it), 800 iterations without early stop, otherwise like ours, applied at every NFE; its tuning time is the whole "
    "function's, in every cell",
}
# Run on every cell; the rest only where Plan.methods_for says (the comparison cells).
EVERYWHERE = ("untuned", "time-shift", "ours", "ours-full", "ours-function")


@dataclass
class Plan:
    models: list[str]
    samplers: list[str]
    nfes: list[int]
    methods: list[str]
    seeds: list[int]
    n: int = 1000
    heavy_nfes: tuple[int, ...] = (5, 10)
    heavy_samplers: tuple[str, ...] = ("ddim", "dpmpp_2m")
    family_methods: tuple[str, ...] = ("dode", "schedule", "joint")
    family_nfes: tuple[int, ...] = (4, 5, 6, 8, 10)
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    def methods_for(self, sampler: str, nfe: int) -> list[str]:
        """Methods for one cell: ``EVERYWHERE`` on every cell; on the headline samplers the parameter-family
        methods at ``family_nfes`` and every other method at ``heavy_nfes``."""
        headline = sampler in self.heavy_samplers

        def runs(m: str) -> bool:
            if m in EVERYWHERE:
                return True
            if m in self.family_methods:
                return headline and nfe in self.family_nfes
            return headline and nfe in self.heavy_nfes

        return [m for m in self.methods if runs(m)]


def default_plan() -> Plan:
    samplers = ["ddim", "ddpm", "heun", "dpm_2", "dpmpp_2m"]
    samplers += sorted(n for n, s in registry.samplers().items() if n.startswith("k_diffusion.") and s.tunable)
    ablations = ("energy", "ours-real", "ours-classifier", "ours-function")  # with --methods; not in the default grid
    return Plan(
        models=["digits-ddpm", "digits-edm", "gmm-digits", "digits-flow", "gmm-digits-flow"],
        samplers=samplers,
        nfes=[4, 5, 6, 8, 10, 15, 20],
        methods=[m for m in METHODS if m not in ablations],
        seeds=[0, 1, 2],
    )


def quick_plan() -> Plan:
    return Plan(
        models=["gmm-digits"],
        samplers=["ddim"],
        nfes=[5],
        methods=["untuned", "paper-seq", "ours"],
        seeds=[0],
        n=200,
        heavy_samplers=("ddim",),
        heavy_nfes=(5,),
        overrides={"iters": 15, "pool": 64, "batch": 32, "val_size": 64, "teacher_substeps": 6, "teacher_tolerance": 0},
    )


def _tune(
    model: Any, spec: Any, sigmas: torch.Tensor, schedule: str, config: TuneConfig, overrides: dict[str, Any]
) -> tuple[Any, float]:
    keep = {k: v for k, v in overrides.items() if not (k == "batch" and config.objective == "paper")}
    started = time.perf_counter()
    result = tune_set(model, spec, sigmas, schedule, replace(config, **keep), eval_n=0).result
    return result, time.perf_counter() - started


def _tune_function(model: Any, spec: Any, schedule: str, plan: Plan, config: TuneConfig) -> tuple[Any, float]:
    """One τ function over the plan's NFE range on ``schedule``, as a function set, and its tuning seconds."""
    from ..tuning.function_tuner import FUNCTION_DEFAULTS, FunctionTuner

    started = time.perf_counter()
    result = FunctionTuner(
        model,
        spec,
        [schedule],
        (min(plan.nfes), max(plan.nfes)),
        replace(config, **{**FUNCTION_DEFAULTS, **plan.overrides}),
    ).tune()
    probe = make_sigmas(model, schedule, steps_for_nfe(spec, model, schedule, min(plan.nfes)))
    return result.tuned_set(model, probe), time.perf_counter() - started


def _held_out_check(
    model: Any, spec: Any, sigmas: torch.Tensor, lookup: TauLookup, config: TuneConfig, n: int
) -> dict[str, float]:
    """The tuned run's error against a teacher on its own training noise and on fresh noise."""
    solver = registry.get_sampler("dpmpp_2m")
    fine = make_sigmas(model, "logsnr", 200)
    pool, cpu, out = NoiseSet.training(config), torch.device("cpu"), {}
    for label, noise in (
        ("train", torch.cat([pool.noise(c, tuple(model.sample_shape), cpu) for c in range(pool.chunks)])[:n]),
        ("fresh", eval_noise(n, tuple(model.sample_shape), EVAL_SEED + 7)),
    ):
        target = generate(model, solver, fine, noise)
        out[f"traj_err_{label}"] = trajectory_error(generate(model, spec, sigmas, noise, lookup=lookup), target)
        out[f"traj_err_{label}_untuned"] = trajectory_error(generate(model, spec, sigmas, noise), target)
    return out


def _previous(out: Path, plan: Plan) -> tuple[list[dict[str, Any]], float]:
    """Records and seconds of an earlier run in ``out`` (for ``resume``), checked to be comparable."""
    path = out / "results.json"
    if not path.is_file():
        return [], 0.0
    try:
        data = json.loads(path.read_text())
        records, n = list(data["records"]), data["plan"]["n"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a bench results file ({exc}); move it away or run without --resume") from None
    if n != plan.n:
        raise ValueError(f"{path} was made with --n {n}, this run has --n {plan.n}; resume with the same --n")
    return records, float(data.get("seconds", 0.0))


def _key(r: dict[str, Any]) -> tuple:
    return r["model"], r["sampler"], r["steps"], r["method"], r["seed"]


def run_bench(plan: Plan, out: Path, log: Callable[[str], None] = print, resume: bool = False) -> dict[str, Any]:
    """Run ``plan``, writing the results after every cell; ``resume`` keeps the records of an earlier run
    in ``out`` and runs only what they lack."""
    out.mkdir(parents=True, exist_ok=True)
    records, earlier = _previous(out, plan) if resume else ([], 0.0)
    done = {_key(r) for r in records}
    taus: dict[str, Any] = _taus_of(records, plan.seeds[0])
    functions: dict[tuple, tuple[Any, float]] = {}  # (model, sampler, method, seed) → (function set, seconds)
    started = time.perf_counter() - earlier
    for model_name in plan.models:
        model = registry.load_model(model_name).to(plan.device)
        has_fd = fd_metric(model) is not None
        for sampler in plan.samplers:
            spec = registry.get_sampler(sampler)
            if model.space == "flow":  # flow models are run on their own schedule (ComfyUI's simple, their shift)
                schedule = model.default_schedule
            else:
                schedule, _ = choose_schedule(model, spec, 10)
            done_steps: set[int] = set()
            for nfe in plan.nfes:
                try:
                    steps = steps_for_nfe(spec, model, schedule, nfe)
                except ValueError:
                    continue
                if steps in done_steps:  # two-stage samplers: NFE 5 and 6 both allow 3 steps (5 evaluations)
                    continue
                done_steps.add(steps)
                methods = [
                    m for m in plan.methods_for(sampler, nfe) if not (m == "time-shift" and model.space == "flow")
                ]  # defined for VP models only
                todo = [
                    (m, seed)
                    for m in methods
                    for seed in (plan.seeds if m not in ("untuned", "time-shift") else [0])
                    if (model_name, sampler, steps, m, seed) not in done
                ]
                if not todo:
                    continue
                sigmas = make_sigmas(model, schedule, steps)
                noise = eval_noise(plan.n, tuple(model.sample_shape), EVAL_SEED)
                ref = reference(model, spec, schedule, noise, start_sigma=float(sigmas[0]))
                base = evaluate(model, spec, sigmas, schedule, n=plan.n, ref=ref)
                cell = dict(
                    model=model_name,
                    sampler=sampler,
                    nfe=base["nfe"],
                    steps=steps,
                    schedule=schedule,
                    fd_untuned=base["fd"],
                    fd_reference=base["fd_reference"],
                    traj_err_untuned=base["traj_err"],
                )
                for method, seed in todo:
                    config = METHODS[method](seed)
                    row = dict(cell, method=method, seed=seed)
                    if config is None:
                        row.update(
                            fd=base["fd"], traj_err=base["traj_err"], tune_seconds=0.0, sample_seconds=base["seconds"]
                        )
                    elif isinstance(config, TimeShift):  # training-free: a rule, not a tuned set
                        after = evaluate(model, spec, sigmas, schedule, n=plan.n, ref=ref, lookup=config)
                        row.update(
                            fd=after["fd"],
                            traj_err=after["traj_err"],
                            tune_seconds=0.0,
                            sample_seconds=after["seconds"],
                        )
                    elif method in FUNCTION_METHODS:
                        key = (model_name, sampler, method, seed)
                        if key not in functions:
                            functions[key] = _tune_function(model, spec, schedule, plan, config)
                        fn_set, seconds = functions[key]
                        one = fn_set.for_run(model, sigmas, schedule=schedule)
                        after = evaluate(model, spec, sigmas, schedule, n=plan.n, ref=ref, lookup=one.lookup())
                        row.update(
                            fd=after["fd"],
                            traj_err=after["traj_err"],
                            tune_seconds=round(seconds, 2),
                            sample_seconds=after["seconds"],
                            identity=bool(fn_set.extra["selection"]["fallback_identity"]),
                            function_selection=fn_set.extra["selection"],  # worst-run score per validation
                            function_runs=fn_set.function_range["runs"],
                            tau_over_sigma=(one.tau / one.eval_sigmas).tolist(),
                            sigmas=one.sigmas.tolist(),
                        )
                    else:
                        result, seconds = _tune(model, spec, sigmas, schedule, config, plan.overrides)
                        lookup = result.tuned_set(model).lookup()
                        after = evaluate(model, spec, result.sigmas, schedule, n=plan.n, ref=ref, lookup=lookup)
                        row.update(
                            fd=after["fd"],
                            traj_err=after["traj_err"],
                            tune_seconds=round(seconds, 2),
                            sample_seconds=after["seconds"],
                            identity=bool(result.selection.get("fallback_identity", False)),
                            tau_over_sigma=(result.tau / result.eval_sigmas).tolist(),
                            sigmas=result.sigmas.tolist(),
                            dode_lambda=None if result.dode_lambda is None else result.dode_lambda.tolist(),
                        )
                        if seed == plan.seeds[0]:
                            if method in ("ours", "ours-full") and nfe == 10:
                                row.update(
                                    _held_out_check(model, spec, result.sigmas, lookup, config, min(plan.n, 512))
                                )
                            taus.setdefault(f"{model_name}|{sampler}|{base['nfe']}", {})[method] = (
                                result.eval_sigmas,
                                result.tau,
                            )
                    gap = (row["fd_untuned"] - row["fd_reference"]) if has_fd else None
                    row["gap_closed"] = ((row["fd_untuned"] - row["fd"]) / gap) if gap and gap > 0 else None
                    records.append(row)
                    log(_line(row))
                _write(out, plan, records, taus, time.perf_counter() - started)
    return _write(out, plan, records, taus, time.perf_counter() - started)


def _line(r: dict[str, Any]) -> str:
    fd = "n/a" if r["fd"] is None else f"{r['fd']:.4g}"
    gap = "" if r["gap_closed"] is None else f" gap {r['gap_closed']:.0%}"
    return (
        f"{r['model']:<12} {r['sampler']:<26} NFE {r['nfe']:>2} {r['method']:<10} seed {r['seed']}: FD {fd}"
        f"{gap} traj {r['traj_err']:.4f} tune {r['tune_seconds']:.0f}s"
    )


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds per model × sampler × NFE × method."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["sampler"], r["nfe"], r["method"]), []).append(r)
    rows = []
    for (model, sampler, nfe, method), rs in groups.items():

        def stat(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return None, None
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

        fd, fd_sd = stat("fd")
        gap, gap_sd = stat("gap_closed")
        traj, traj_sd = stat("traj_err")
        tune_s, _ = stat("tune_seconds")
        rows.append(
            dict(
                model=model,
                sampler=sampler,
                nfe=nfe,
                method=method,
                seeds=len(rs),
                fd=fd,
                fd_sd=fd_sd,
                gap_closed=gap,
                gap_sd=gap_sd,
                traj_err=traj,
                traj_sd=traj_sd,
                tune_seconds=tune_s,
                fd_untuned=rs[0]["fd_untuned"],
                fd_reference=rs[0]["fd_reference"],
                schedule=rs[0]["schedule"],
                identity=sum(bool(r.get("identity")) for r in rs),
            )
        )
    return rows


def markdown(summary: list[dict[str, Any]], methods: list[str], min_methods: int = 0) -> str:
    """A table of the cells (model × sampler × NFE) that ran at least ``min_methods`` of ``methods``."""

    def fmt(mean, sd, pct=False):
        if mean is None:
            return "–"
        if sd is None:  # one seed: no spread to show
            return f"{mean:.0%}" if pct else f"{mean:.4g}"
        return f"{mean:.0%} ± {sd:.0%}" if pct else f"{mean:.4g} ± {sd:.2g}"

    lines = [
        "| model | sampler | NFE | schedule | " + " | ".join(methods) + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    cells: dict[tuple, dict[str, dict]] = {}
    for row in summary:
        cells.setdefault((row["model"], row["sampler"], row["nfe"], row["schedule"]), {})[row["method"]] = row
    for (model, sampler, nfe, schedule), by_method in sorted(cells.items()):
        if sum(m in by_method for m in methods) < min_methods:
            continue
        parts = []
        for m in methods:
            row = by_method.get(m)
            if row is None:
                parts.append("")
            elif m == "untuned":
                parts.append(
                    f"FD {fmt(row['fd'], 0.0).split(' ±')[0]}"
                    if row["fd"] is not None
                    else f"traj {row['traj_err']:.4f}"
                )
            else:
                one = row["seeds"] < 2
                gap = (
                    ""
                    if row["gap_closed"] is None
                    else f"<br>gap {fmt(row['gap_closed'], None if one else row['gap_sd'], True)}"
                )
                fd = (
                    f"FD {fmt(row['fd'], None if one else row['fd_sd'])}"
                    if row["fd"] is not None
                    else f"traj {fmt(row['traj_err'], None if one else row['traj_sd'])}"
                )
                ident = f"<br>identity ×{row['identity']}" if row["identity"] else ""
                parts.append(fd + gap + ident)
        lines.append(f"| {model} | {sampler} | {nfe} | {schedule} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return device


def _write(
    out: Path, plan: Plan, records: list, taus: dict, seconds: float, threads: int | str | None = None
) -> dict[str, Any]:
    summary = summarise(records)
    methods = [m for m in plan.methods if any(r["method"] == m for r in records)]
    data = {
        "plan": dict(plan.__dict__),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads() if threads is None else threads,
        "device": _device_name(plan.device),
        "methods": {m: DESCRIPTIONS[m] for m in methods},
        "records": records,
        "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "results.md").write_text(markdown(summary, methods) + "\n")
    for model in plan.models:
        for sampler in plan.samplers:
            rows = [r for r in summary if r["model"] == model and r["sampler"] == sampler and r["fd"] is not None]
            if not rows:
                continue
            series = {}
            for method in methods:
                pts = sorted((r["nfe"], r["fd"]) for r in rows if r["method"] == method)
                if pts:
                    series[method] = ([p[0] for p in pts], [p[1] for p in pts])
            plots.fd_vs_nfe(
                series,
                out / f"fd_vs_nfe_{model}_{sampler}.png",
                reference=rows[0]["fd_reference"],
                title=f"{model}, {sampler}: FD vs NFE",
            )
    for key, by_method in taus.items():
        model, sampler, nfe = key.split("|")
        if int(nfe) in (9, 10):  # the τ/σ figure per sampler at NFE 10 (9 for two-stage samplers)
            plots.tau_ratios(
                by_method,
                out / f"tau_{model}_{sampler}_nfe{nfe}.png",
                title=f"learned τ/σ: {model}, {sampler}, NFE {nfe}",
            )
    return data


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """One report from several ``results.json`` (runs split by model, sampler or NFE); a later file's
    record replaces an earlier one for the same model × sampler × NFE × method × seed."""
    datas = [json.loads(Path(p).read_text()) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    by_key: dict[tuple, dict[str, Any]] = {}
    for data in datas:
        for r in data["records"]:
            by_key[(r["model"], r["sampler"], r["nfe"], r["method"], r["seed"])] = r
    records = list(by_key.values())
    ns = {d["plan"]["n"] for d in datas}
    if len(ns) > 1:
        raise ValueError(f"these runs used different evaluation sizes {sorted(ns)}; merge runs with one --n")

    def ordered(key: str) -> list:
        return list(dict.fromkeys(v for d in datas for v in d["plan"][key]))

    plan = Plan(
        models=ordered("models"),
        samplers=ordered("samplers"),
        nfes=sorted(set(ordered("nfes"))),
        methods=[m for m in METHODS if any(r["method"] == m for r in records)],
        seeds=sorted(set(ordered("seeds"))),
        n=ns.pop(),
        device=datas[0].get("device", "cpu"),
    )
    counts = sorted({int(d["threads"]) for d in datas if str(d.get("threads", "")).isdigit()})
    threads = (counts[0] if len(counts) == 1 else f"{counts[0]}–{counts[-1]}") if counts else "?"
    return _write(out, plan, records, _taus_of(records, plan.seeds[0]), sum(d["seconds"] for d in datas), threads)


def _taus_of(records: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """The learned τ/σ per model × sampler × NFE and method (one seed), for the τ figures."""
    taus: dict[str, Any] = {}
    for r in records:
        if r.get("tau_over_sigma") and r["seed"] == seed:
            ratio = torch.tensor(r["tau_over_sigma"])
            taus.setdefault(f"{r['model']}|{r['sampler']}|{r['nfe']}", {})[r["method"]] = (
                torch.ones_like(ratio),
                ratio,
            )
    return taus


README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def check_readme(readme: Path) -> str:
    """The README's text, if it has the generated section :func:`update_readme` replaces (checked before a run)."""
    from ..io import OutputPathError

    if not readme.is_file() or not os.access(readme, os.W_OK):
        raise OutputPathError(f"cannot update {readme}: it is not a writable file; check --update-readme")
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise OutputPathError(
            f"{readme} has no {README_START} … {README_END} section to replace; add the two "
            f"markers where the results should go"
        )
    return text


def update_readme(readme: Path, data: dict[str, Any], figures: Path) -> None:
    """Replace the README's generated results section with the benchmark's table."""
    text = check_readme(readme)
    methods = list(data["methods"])
    body = [
        README_START,
        "",
        f"Generated by `timetuner bench` ({data['seconds'] / 60:.0f} min of runs on {data.get('device', 'cpu')}, "
        f"{data['threads']} CPU thread{'' if data['threads'] == 1 else 's'} per run, torch "
        f"{data['torch']}); FD mean ± spread (standard deviation) over tuning seeds where a method ran several "
        f"(up to {len(data['plan']['seeds'])}), the value of its one seed otherwise; "
        f"{data['plan']['n']} evaluation samples from noise no method tuned on. Methods:",
        "",
    ]
    body += [f"- **{m}**: {d}" for m, d in data["methods"].items()]
    grid = [m for m in ("untuned", "time-shift", "ours") if m in methods]
    heavy = [m for m in methods if m not in grid]
    body += [
        "",
        "Every cell: the plain sampler, Time-Shift and our default tuner (cells with more seeds show mean ± "
        "spread; 'identity ×k': k of the seeds fell back to τ = σ).",
        "",
        markdown(data["summary"], grid),
    ]
    comparison = markdown(data["summary"], ["untuned", *heavy, "ours"], min_methods=4) if heavy else ""
    if comparison.count("\n") > 1:  # more than the header
        body += ["", "The comparison cells, every method:", "", comparison]
    body += ["", README_END]
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + "\n".join(body) + text[end:])
