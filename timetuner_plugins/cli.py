"""The ``timetuner`` command line (also ``python -m timetuner_plugins``)."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

import registry

from . import __version__


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (e.g. --option s_churn=10)", param_hint="--option")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _device_option(f):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Where models run: auto (CUDA when available), cpu, cuda or cuda:N.",
    )(f)


def _load_model(name: str, device: str):
    """A registered model on ``device`` (checked first, so a missing GPU is one clear error)."""
    from .devices import resolve_device

    try:
        where = resolve_device(device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    if name.startswith("diffusers:"):  # a folder saved by diffusers' save_pretrained (the diffusers extra)
        from .adapters.diffusers_pipeline import load_spec

        try:
            return load_spec(name).to(where)
        except (ValueError, OSError, ImportError) as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    return registry.load_model(name).to(where)


def _file_stem(model: str) -> str:
    """``model`` as a file-name part: a diffusers:PATH model by its folder's name."""
    if model.startswith("diffusers:"):
        return "diffusers-" + Path(model.removeprefix("diffusers:").partition("?")[0]).name
    return model


class _Group(click.Group):
    """Turns our own errors into one clean line and exit code 1 (a traceback only with TIMETUNER_DEBUG)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined: the tuning workflow first

    def invoke(self, ctx: click.Context) -> Any:
        from .tuning.checkpoint import CheckpointError
        from .extras import MissingExtraError
        from .io import OutputPathError
        from .tuning.parallel import ShardError
        from .sets.shipped import NoShippedSet
        from .sets.tau import TauLookupError
        from .sets.tuned_set import TunedSetError
        from .tuning.tuner import TuneError

        try:
            return super().invoke(ctx)
        except (
            registry.UnknownNameError,
            registry.SamplerOptionError,
            registry.SamplerSpaceError,
            TunedSetError,
            TuneError,
            TauLookupError,
            FileExistsError,
            OutputPathError,
            NoShippedSet,
            CheckpointError,
            ShardError,
            MissingExtraError,
        ) as exc:
            if os.environ.get("TIMETUNER_DEBUG"):
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="timetuner")
def cli() -> None:
    """TimeTuner: learned network timesteps (τ) for few-step diffusion samplers."""


@cli.command(short_help="List samplers and the plugin each comes from.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def samplers(as_json: bool) -> None:
    """List the registered samplers, with the plugin each comes from."""
    specs = registry.samplers()
    rows = [
        {
            "name": s.name,
            "plugin": s.plugin,
            "stochastic": s.is_stochastic(),
            "tunable": s.tunable,
            "defaults": {k: v for k, v in s.defaults.items()},
            "description": s.description,
            **({"untunable_reason": s.untunable_reason} if not s.tunable else {}),
        }
        for s in specs.values()
    ]
    problems = [{"plugin": p.plugin, "message": p.message} for p in registry.problems()]
    width = max((len(r["name"]) for r in rows), default=4)
    lines = [
        f"{r['name']:<{width}}  {r['plugin']:<34} {'stochastic' if r['stochastic'] else 'deterministic':<13} "
        f"{'' if r['tunable'] else '(untunable: ' + r['untunable_reason'] + ') '}{r['description']}"
        for r in rows
    ]
    lines += [f"note: plugin {p['plugin']}: {p['message']}" for p in problems]
    _emit({"samplers": rows, "problems": problems}, as_json, "\n".join(lines))


@cli.command(short_help="List the registered models.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the registered models."""
    rows = [{"name": m.name, "plugin": m.plugin, "description": m.description} for m in registry.models().values()]
    width = max((len(r["name"]) for r in rows), default=4)
    _emit(rows, as_json, "\n".join(f"{r['name']:<{width}}  {r['description']}" for r in rows))


@cli.command(short_help="List the registered σ schedules.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schedules(as_json: bool) -> None:
    """List the registered σ schedules (the choices of --schedule)."""
    rows = [{"name": s.name, "plugin": s.plugin, "description": s.description} for s in registry.schedules().values()]
    width = max((len(r["name"]) for r in rows), default=4)
    _emit(rows, as_json, "\n".join(f"{r['name']:<{width}}  {r['description']}" for r in rows))


class _NFE(click.ParamType):
    """An NFE (``10``) or a range of NFEs (``4-20``)."""

    name = "K|LO-HI"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | tuple[int, int]:
        if isinstance(value, (int, tuple)):
            return value
        text = str(value).strip()
        try:
            if "-" in text:
                lo, hi = (int(v) for v in text.split("-", 1))
                if 1 <= lo < hi:
                    return lo, hi
            elif int(text) >= 1:
                return int(text)
        except ValueError:
            pass
        self.fail(f"{value!r} is neither an NFE (e.g. 10) nor a range LO-HI with 1 ≤ LO < HI (e.g. 4-20)", param, ctx)


def _steps(spec: Any, model: Any, schedule: str, steps: int | None, nfe: int | None) -> int:
    from .sampling.run import steps_for_nfe

    if (steps is None) == (nfe is None):
        raise click.UsageError("give exactly one of --steps (sampler steps) or --nfe (network evaluations)")
    return steps if steps is not None else steps_for_nfe(spec, model, schedule, nfe)


@cli.command(short_help="Train τ for a sampler and save a tuned set.")
@click.option(
    "--model",
    required=True,
    help="A registered model (see `timetuner models`), or diffusers:PATH[?OPTIONS] "
    "(a saved diffusers pipeline or model folder; see docs/diffusers.md).",
)
@click.option("--sampler", required=True, help="A registered sampler (see `timetuner samplers`).")
@click.option("--steps", type=click.IntRange(1), help="Sampler steps (intervals of the σ schedule).")
@click.option(
    "--nfe",
    type=_NFE(),
    help="Or: the most steps within this many network evaluations; a range LO-HI (e.g. 4-20) tunes one τ "
    "function that applies at every step count within it.",
)
@click.option(
    "--schedule",
    default=None,
    help="σ schedule, one of `timetuner schedules` (default: the model's); 'auto' picks the one the "
    "untuned sampler does best with; with an --nfe range, several comma-separated ones to tune the function on.",
)
@click.option(
    "--objective",
    type=click.Choice(["energy", "final", "trajectory", "paper"]),
    default="energy",
    show_default=True,
    help="energy: match the teacher's sample distribution; final/trajectory: match "
    "its final sample / states per noise; paper: Xia et al.'s per-interval ε-consistency.",
)
@click.option(
    "--mode",
    type=click.Choice(["sequential", "parallel"]),
    default="sequential",
    show_default=True,
    help="For --objective paper.",
)
@click.option(
    "--iters", type=click.IntRange(1), default=None, help="Iterations (per interval for paper; 800 for an --nfe range)."
)
@click.option(
    "--batch", type=click.IntRange(2), default=None, help="Batch size (default 64; 128 for an --nfe range; paper 64)."
)
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 0.03; paper 2e-3).")
@click.option(
    "--param",
    type=click.Choice(["log_ratio", "t_ratio"]),
    default=None,
    help="How τ is parametrised: log_ratio, log(τ/σ) bounded to ±1 (default); t_ratio, the paper's "
    "τ = r·t in the model's own time (default for --objective paper).",
)
@click.option(
    "--data",
    type=click.Choice(["teacher", "real"]),
    default=None,
    help="teacher: data-free, the model's own high-NFE run; real: the model's data (energy, paper).",
)
@click.option(
    "--features",
    type=click.Choice(["pixel", "tuning_features"]),
    default=None,
    help="Where the energy objective compares samples: pixel (default, any model) or the model's own "
    "tuning_features (the bundled digits models: a classifier).",
)
@click.option(
    "--accuracy-hinge",
    type=click.FloatRange(0),
    default=None,
    help="Energy objective: weight of the penalty on the samples' error to the teacher growing past the plain "
    "sampler's (default 3; 0: energy alone).",
)
@click.option(
    "--select-by",
    type=click.Choice(["objective", "fd"]),
    default=None,
    help="Held-out selection by the objective itself (default, any model) or by the model's FD (bundled models).",
)
@click.option(
    "--select/--no-select",
    default=None,
    help="Keep the τ that scores best on held-out noise, the untuned sampler included (default on; off for paper).",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=None,
    help="Stop after this many validations without a 0.5 % improvement (default 2; 0 runs every iteration).",
)
@click.option(
    "--families",
    default="tau",
    show_default=True,
    help="What to train, comma-separated: tau (network time per evaluation), dode (D-ODE λ per "
    "evaluation, Kim et al. 2024), sigma (the schedule's interior σ's).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the tuning noise, batches and validation noise; the same seed gives the same set.",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Sampler option, repeatable (see `timetuner samplers` for each sampler's defaults).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Output tuned set (default: MODEL_SAMPLER_SCHEDULE_nfeK.safetensors).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint an interrupted run left beside --out.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(1),
    default=25,
    show_default=True,
    help="Iterations between checkpoints (OUT.ckpt).",
)
@click.option(
    "--eval-n",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Samples for the before/after metrics stored in the set (0 skips them).",
)
@click.option(
    "--micro-batch",
    type=click.IntRange(1),
    default=None,
    help="Rows per forward/backward pass (default: the whole batch): a batch of 16 in passes of 2 fits "
    "where 16 at once does not, with the same result.",
)
@click.option(
    "--recompute",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Recompute each network evaluation's activations in the backward pass instead of storing them: "
    "memory flat in NFE for about one more forward per evaluation; auto: on for networks of 20 M "
    "parameters or more. On CPU, preload jemalloc to keep it flat (glibc's heap grows; docs/scale.md).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default="float32",
    show_default=True,
    help="The network's dtype (the sampler's state, τ and the loss stay float32).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_device_option
def tune(
    model: str,
    sampler: str,
    steps: int | None,
    nfe: int | tuple[int, int] | None,
    schedule: str | None,
    objective: str,
    mode: str,
    iters: int | None,
    batch: int | None,
    lr: float | None,
    param: str | None,
    data: str | None,
    features: str | None,
    accuracy_hinge: float | None,
    select_by: str | None,
    select: bool | None,
    patience: int | None,
    families: str,
    seed: int,
    options: tuple[str, ...],
    out: Path | None,
    overwrite: bool,
    resume: bool,
    checkpoint_every: int,
    eval_n: int,
    micro_batch: int | None,
    recompute: str,
    dtype: str,
    quiet: bool,
    device: str,
) -> None:
    """Train τ for a sampler × schedule × model and save a tuned set.

    Under torchrun (``torchrun --nproc-per-node N -m timetuner_plugins tune ...``) each process runs its share
    of every batch (gloo on CPU, NCCL on GPUs) and rank 0 alone writes the checkpoint and the set."""
    from .tuning import parallel
    from .adapters.denoisers import set_network_dtype
    from .evaluation.evaluate import choose_schedule
    from .io import check_output_file
    from .devices import resolve_device
    from .sampling.run import eval_sigmas, make_sigmas
    from .sets.tuned_set import verdict
    from .tuning.pipeline import measure, tune_set
    from .tuning.tuner import TuneConfig, stop_reason

    if out is not None:
        check_output_file(out, overwrite)
    shards = parallel.init_from_env(resolve_device(device).type)
    if shards is not None and resolve_device(device).type == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', shards.rank)}"
    lead = shards is None or shards.rank == 0
    quiet = quiet or not lead
    spec = registry.get_sampler(sampler)
    opts = _parse_options(options)
    spec.options(opts)  # an option the sampler does not take stops here, before any work
    for name in (schedule or "").split(",") if isinstance(nfe, tuple) else [schedule]:
        if name not in (None, "", "auto"):
            registry.get_schedule(name.strip())
    given = {
        k: v
        for k, v in dict(
            iters=iters,
            lr=lr,
            param=param,
            data=data,
            batch=batch,
            select=select,
            patience=patience,
            features=features,
            accuracy_hinge=accuracy_hinge,
            select_by=select_by,
        ).items()
        if v is not None
    }
    if isinstance(nfe, tuple):
        _tune_function(
            model,
            spec,
            opts,
            nfe,
            schedule,
            objective,
            given,
            families=families,
            seed=seed,
            steps=steps,
            resume=resume,
            checkpoint_every=checkpoint_every,
            shards=shards,
            out=out,
            overwrite=overwrite,
            device=device,
            dtype=dtype,
            eval_n=eval_n,
            quiet=quiet,
        )
        return
    m = _load_model(model, device)
    if dtype != "float32":
        set_network_dtype(m, dtype)
    if schedule == "auto":
        if nfe is None and steps is None:
            raise click.UsageError("give exactly one of --steps (sampler steps) or --nfe (network evaluations)")
        budget = nfe if nfe is not None else spec.nfe(make_sigmas(m, m.default_schedule, steps))
        schedule, scores = choose_schedule(m, spec, budget, options=opts)
        if lead:
            click.echo(f"schedule auto: {schedule} (" + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()) + ")")
        if steps is not None:
            steps, nfe = None, budget
    schedule = schedule or m.default_schedule
    registry.get_schedule(schedule)
    n_steps = _steps(spec, m, schedule, steps, nfe)
    sigmas = make_sigmas(m, schedule, n_steps)
    base = replace(
        TuneConfig.paper(mode) if objective == "paper" else TuneConfig(objective=objective),
        **given,
        seed=seed,
        show_progress=not quiet,
        checkpoint_every=checkpoint_every,
        micro_batch=micro_batch,
        recompute=recompute,
        families=tuple(f.strip() for f in families.split(",") if f.strip()),
    )
    evaluations = len(eval_sigmas(spec, sigmas, tuple(m.sample_shape), spec.options(opts), m))
    out = check_output_file(
        out or Path(f"{_file_stem(model)}_{spec.name}_{schedule}_nfe{evaluations}.safetensors"), overwrite
    )
    checkpoint = out.with_name(out.name + ".ckpt")
    try:  # evaluated below, apart, so an interrupt while evaluating keeps the tuned set
        result = tune_set(
            m, spec, sigmas, schedule, base, options=opts, eval_n=0, checkpoint=checkpoint, resume=resume
        ).result
        if not lead:  # rank 0 evaluates and writes
            return
    except KeyboardInterrupt:
        saved = checkpoint.exists()
        raise click.ClickException(
            f"interrupted; nothing written to {out}. "
            + (
                f"Run the same command with --resume to continue from {checkpoint}"
                if saved
                else "No checkpoint was reached yet: run the same command again"
            )
        ) from None
    if result.selection.get("stopped_early_at"):
        click.echo(f"stopped early at {stop_reason(base, result.selection['stopped_early_at'])}", err=True)
    before = after = {}
    if eval_n:
        click.echo(f"evaluating untuned and tuned on {eval_n} samples from held-out noise", err=True)
        try:
            before, after = measure(
                m, spec, sigmas, schedule, result, options=result.options, n=eval_n, progress=not quiet
            )
        except KeyboardInterrupt:  # the tuning is done: keep it, without the metrics
            result.tuned_set(m).save(out, overwrite=overwrite)
            raise click.ClickException(
                f"interrupted while evaluating; wrote {out} without its before/after "
                f"metrics (`timetuner eval --tuned {out}` measures them)"
            ) from None
    result.tuned_set(m, before, after).save(out, overwrite=overwrite)
    click.echo(
        f"wrote {out}: {spec.name} on {model}, {schedule}, {n_steps} steps, NFE {len(result.tau)}, "
        f"{objective}, {result.seconds:.1f} s"
    )
    sel = result.selection
    if sel:
        click.echo(
            f"  validation ({sel['metric']}, held-out noise): untuned {sel['untuned']:.4g}, kept "
            + (
                "the untuned sampler: no τ validated better"
                if sel["fallback_identity"]
                else f"iteration {sel['best_iteration']} ({sel['best']:.4g})"
            )
            + (
                f"; stopped early at iteration {sel['stopped_early_at']} of {base.iters} (no gain in "
                f"{base.patience} validations)"
                if sel.get("stopped_early_at")
                else ""
            )
        )
    if eval_n:
        click.echo(_metric_line("untuned", before) + "\n" + _metric_line("tuned", after))
        said = verdict(before, after)
        if said:
            click.echo(f"  the set {said}")


def _tune_function(
    model: str,
    spec: Any,
    opts: dict[str, Any],
    nfe_range: tuple[int, int],
    schedule: str | None,
    objective: str,
    given: dict[str, Any],
    *,
    families: str,
    seed: int,
    steps: int | None,
    resume: bool,
    checkpoint_every: int,
    shards: Any,
    out: Path | None,
    overwrite: bool,
    device: str,
    dtype: str,
    eval_n: int,
    quiet: bool,
) -> None:
    """``tune --nfe LO-HI``: one τ function over the range, measured at its representative run."""
    from .adapters.denoisers import set_network_dtype
    from .io import check_output_file
    from .tuning.function_tuner import FUNCTION_DEFAULTS
    from .tuning.pipeline import representative_nfe, tune_function_set
    from .sets.tuned_set import verdict
    from .tuning.tuner import TuneConfig

    if steps is not None:
        raise click.UsageError("an --nfe range covers every step count within it: drop --steps")
    if shards is not None or objective == "paper" or families != "tau":
        raise click.UsageError(
            "a τ function is tuned in one process, with the joint objectives and τ alone: drop torchrun, "
            "--objective paper and --families, or tune one NFE at a time"
        )
    m = _load_model(model, device)
    if dtype != "float32":
        set_network_dtype(m, dtype)
    schedules = [s.strip() for s in (schedule or m.default_schedule).split(",") if s.strip()]
    if "auto" in schedules:
        raise click.UsageError("--schedule auto picks one schedule for one NFE; name the schedules for a range")
    for name in schedules:
        registry.get_schedule(name)
    lo, hi = nfe_range
    out = check_output_file(
        out or Path(f"{_file_stem(model)}_{spec.name}_{'+'.join(schedules)}_nfe{lo}-{hi}.safetensors"), overwrite
    )
    config = TuneConfig(
        objective=objective,
        seed=seed,
        show_progress=not quiet,
        checkpoint_every=checkpoint_every,
        **{**FUNCTION_DEFAULTS, **given},
    )
    if eval_n:
        click.echo(
            f"then measuring untuned and tuned on {eval_n} samples at NFE {representative_nfe(nfe_range)}", err=True
        )
    checkpoint = out.with_name(out.name + ".ckpt")
    try:
        made = tune_function_set(
            m,
            spec,
            schedules,
            nfe_range,
            config,
            options=opts,
            eval_n=eval_n,
            progress=not quiet,
            checkpoint=checkpoint,
            resume=resume,
        )
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted; nothing written to {out}. "
            + (
                f"Run the same command with --resume to continue from {checkpoint}"
                if checkpoint.exists()
                else "No checkpoint was reached yet: run the same command again"
            )
        ) from None
    made.tuned_set.save(out, overwrite=overwrite)
    res = made.result
    click.echo(
        f"wrote {out}: a τ function for {spec.name} on {model}, NFE {lo}–{hi}, {', '.join(schedules)}, "
        f"{objective}, {res.seconds:.1f} s"
    )
    sel = res.selection
    click.echo(
        "  validation (held-out noise, each tuned run against its plain sampler): "
        + (
            "kept the untuned sampler: no function was better on every run"
            if sel["fallback_identity"]
            else "worst change "
            + f"{sel['best']:+.3g}; per NFE "
            + ", ".join(f"{r['nfe']} {r['val_change']:+.3g}" for r in res.runs)
        )
        + (
            f"; stopped early at iteration {sel['stopped_early_at']} of {config.iters}"
            if sel["stopped_early_at"]
            else ""
        )
    )
    if eval_n:
        click.echo(_metric_line("untuned", made.before) + "\n" + _metric_line("tuned", made.after))
        said = verdict(made.before, made.after)
        if said:
            click.echo(f"  at NFE {made.after['nfe']} the set {said}")


def _unavailable(sampler: str) -> str:
    """Why ``sampler`` is not registered here ('' when it is)."""
    try:
        registry.get_sampler(sampler)
    except registry.UnknownNameError as exc:
        return exc.notes[0] if exc.notes else f"no installed plugin registers {sampler!r}"
    return ""


def _iterations(report: dict[str, Any]) -> str:
    """'250 iterations', or 'stopped early: 125 of 250 iterations' for a run the early stop ended."""
    stopped = (report["extra"].get("selection") or {}).get("stopped_early_at")
    if stopped:
        return f"stopped early: {stopped} of {report['iterations']} iterations"
    return f"{report['iterations']} iterations" + (" per interval" if report["objective"] == "paper" else "")


def _metric_line(label: str, m: dict[str, Any]) -> str:
    fd = "n/a" if m.get("fd") is None else f"{m['fd']:.4f}"
    return f"  {label:<8} FD {fd}  traj_err {m['traj_err']:.4f}  NFE {m['nfe']}  {m['seconds']:.2f} s"


@cli.command(name="eval", short_help="Tuned set vs plain sampler: FD, error, time.")
@click.option("--tuned", "tuned_path", type=click.Path(path_type=Path), default=None, help="A tuned-set file.")
@click.option("--model", default=None, help="Model (default: the one the set was tuned for).")
@click.option(
    "--sampler",
    default=None,
    help="The sampler (default with --tuned: the set's; a different one must "
    "pass the set's mismatch check, see --force).",
)
@click.option("--steps", type=click.IntRange(1), default=None, help="Sampler steps (default with --tuned: the set's).")
@click.option(
    "--schedule", default=None, help="σ schedule, one of `timetuner schedules` (default: the set's, else the model's)."
)
@click.option("--n", "n", type=click.IntRange(2), default=1000, show_default=True, help="Samples.")
@click.option("--seed", type=int, default=10_000, show_default=True, help="Evaluation noise seed.")
@click.option("--force", is_flag=True, help="Apply a set whose model, sampler or schedule does not match.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_device_option
def eval_(
    tuned_path: Path | None,
    model: str | None,
    sampler: str | None,
    steps: int | None,
    schedule: str | None,
    n: int,
    seed: int,
    force: bool,
    as_json: bool,
    device: str,
) -> None:
    """Evaluate a tuned set against the untuned sampler: FD, trajectory error, NFE, seconds."""
    from .evaluation.evaluate import evaluate
    from .sampling.run import make_sigmas
    from .sets.tuned_set import TunedSet

    if tuned_path is not None:
        ts = TunedSet.load(tuned_path)
        spec = registry.get_sampler(sampler or ts.sampler)
        m = _load_model(model or ts.model_id, device)
        if steps is None and schedule is None:
            sigmas, schedule = ts.sigmas, ts.schedule
        else:  # the run the user asked for; the set's check below says where it differs
            schedule = schedule or ts.schedule
            if schedule not in registry.schedules():
                raise click.UsageError(
                    f"the set's schedule {schedule!r} is not a registered one; give --schedule "
                    f"(see `timetuner schedules`) with --steps"
                )
            sigmas = make_sigmas(m, schedule, steps or ts.steps)
        options = ts.sampler_options if spec.name == ts.sampler else {}
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")  # said below as one line each, not as Python warnings
            ts = ts.for_run(m, sigmas, schedule=schedule, force=force)  # a function set: τ for this run
            ts.check(model=m, sampler=spec.name, sigmas=sigmas, force=force)
        for warning in said:
            click.echo(f"warning: {warning.message}", err=True)
    else:
        if not (model and sampler and steps):
            raise click.UsageError("give --tuned FILE, or --model, --sampler and --steps to evaluate untuned")
        ts, m, spec = None, _load_model(model, device), registry.get_sampler(sampler)
        schedule = schedule or m.default_schedule
        sigmas, options = make_sigmas(m, schedule, steps), {}
    untuned = evaluate(m, spec, sigmas, schedule, n=n, seed=seed, options=options, progress=not as_json)
    report: dict[str, Any] = {
        "model": m.model_id,
        "sampler": spec.name,
        "schedule": schedule,
        "steps": len(sigmas) - 1,
        "untuned": untuned,
    }
    result = untuned
    if ts is not None:
        result = evaluate(
            m, spec, sigmas, schedule, n=n, seed=seed, options=options, lookup=ts.lookup(), progress=not as_json
        )
        report.update(tuned=result, tuned_set=str(tuned_path))
    report.update({k: result[k] for k in ("fd", "fd_reference", "traj_err", "nfe", "seconds")})
    lines = [
        f"{m.model_id} × {spec.name}, {schedule}, {len(sigmas) - 1} steps ({n} samples)",
        _metric_line("untuned", untuned),
    ]
    if ts is not None:
        lines.append(_metric_line("tuned", result))
    if result.get("fd_reference") is not None:
        lines.append(f"  reference FD (500 NFE) {result['fd_reference']:.4f}")
    _emit(report, as_json, "\n".join(lines))


@cli.command(short_help="Show a tuned set, or list the shipped ones.")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(files: tuple[Path, ...], as_json: bool) -> None:
    """Show a tuned set's metadata and τ; with no FILES, list the shipped sets."""
    from .sets import shipped
    from .sets.tuned_set import TunedSet, TunedSetError, verdict

    if not files:
        rows = [
            {
                "file": str(e.path),
                "model": e.model,
                "sampler": e.sampler,
                "schedule": e.schedule,
                "nfe": e.nfe,
                "objective": e.objective,
                "metrics": e.metrics,
                "unavailable": _unavailable(e.sampler),
            }
            for e in shipped.entries()
        ]
        lines = [
            f"{r['model']:<12} {r['sampler']:<24} NFE {r['nfe']:<3} {r['schedule']:<12} {r['file']}"
            + ("  (sampler not available here)" if r["unavailable"] else "")
            for r in rows
        ]
        notes = sorted({r["unavailable"] for r in rows if r["unavailable"]})
        _emit(rows, as_json, "\n".join(lines + [f"note: {n}" for n in notes]) or "no shipped tuned sets")
        return
    reports, failed = [], False
    for path in files:
        try:
            summary = TunedSet.load(path).summary()
        except TunedSetError as exc:
            failed = True
            reports.append({"path": str(path), "error": str(exc)})
            continue
        said = verdict(summary["metrics_before"], summary["metrics_after"])
        reports.append({**summary, "verdict": said, "unavailable": _unavailable(summary["sampler"])})
    if as_json:
        _emit(reports, True, "")
    else:
        for r in reports:
            if "error" in r:
                click.echo(f"{r['path']}: INVALID\n  {r['error']}")
                continue
            click.echo(
                f"{r['path']}\n  model {r['model_id']} ({r['model_fingerprint'][:16]}…)  sampler {r['sampler']} "
                f"{r['sampler_options'] or ''}\n  schedule {r['schedule']}, {r['steps']} steps, NFE {r['nfe']}, "
                f"objective {r['objective']} ({r['mode']}), {_iterations(r)}, seed {r['seed']}, "
                f"data {r['data_source']}\n  written by timetuner {r['library_version']} at {r['created']}"
            )
            if r["unavailable"]:
                click.echo(f"  sampler not available here: {r['unavailable']}")
            fn = r["extra"].get("tau_function")
            if r.get("tau_function") is not None and fn:
                click.echo(
                    f"  τ function: any step count with NFE {fn['nfe'][0]}–{fn['nfe'][1]}, tuned on "
                    f"{', '.join(fn['schedules'])} (runs at NFE {', '.join(str(x['nfe']) for x in fn.get('runs', []))}); "
                    "shown below at its representative run"
                )
            click.echo("  τ/σ " + " ".join(f"{v:.3f}" for v in r["tau_over_sigma"]))
            checks = r["extra"].get("teacher_check")
            if checks:
                said = ", ".join(f"{c['substeps']} → {2 * c['substeps']}: {100 * c['change']:.1f} %" for c in checks)
                click.echo(
                    f"  teacher: {r['extra']['teacher_substeps']} substeps per step (convergence check, change on "
                    f"doubling: {said})"
                )
            sel = r["extra"].get("selection") or {}
            if sel.get("fallback_identity"):
                click.echo("  identity: tuning did not validate better than the untuned sampler")
            if r["verdict"]:
                click.echo(f"  measured on evaluation noise: {r['verdict']}")
            for label in ("metrics_before", "metrics_after"):
                if r[label]:
                    click.echo(
                        f"  {label}: "
                        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r[label].items())
                    )
    if failed:
        sys.exit(1)


@cli.command(short_help="Tuned vs plain DDIM/DPM++ on digits-ddpm.")
@click.option("--retune", is_flag=True, help="Tune the sets here instead of using the shipped ones.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--n", "n", type=click.IntRange(100), default=1000, show_default=True, help="Samples per evaluation.")
def demo(retune: bool, out: Path, n: int) -> None:
    """Untuned vs tuned DDIM and DPM-Solver++(2M) at NFE 5 and 10 on digits-ddpm, with figures."""
    from .experiments.demo import run_demo
    from .io import check_output_dir

    run_demo(check_output_dir(out), retune=retune, n=n)


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers (e.g. 0,0.25,0.5)") from None


@cli.command(short_help="T-Stitch: small model for the first steps.")
@click.option("--model", default="digits-ddpm", show_default=True, help="The large model.")
@click.option(
    "--small",
    default="digits-ddpm-small",
    show_default=True,
    help="The small model: registered, on the large one's noise schedule.",
)
@click.option("--sampler", default="ddim", show_default=True)
@click.option("--steps", type=click.IntRange(1), default=10, show_default=True)
@click.option("--schedule", default=None, help="σ schedule (default: the large model's).")
@click.option(
    "--fractions",
    default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
    show_default=True,
    help="Switch fractions: the share of evaluations, from the first, made by the small model.",
)
@click.option(
    "--tune",
    "tune_at",
    is_flag=False,
    flag_value="all",
    default=None,
    metavar="[FRACTIONS]",
    help="Also tune τ for the stitched pair: at every fraction, or at the comma-separated ones given.",
)
@click.option("--tune-iters", type=click.IntRange(1), default=250, show_default=True)
@click.option("--n", "n", type=click.IntRange(2), default=1000, show_default=True, help="Samples for FD.")
@click.option("--batch", type=click.IntRange(1), default=500, show_default=True, help="Samples per timed batch.")
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Timing rounds, each timing every fraction once; the fastest run per fraction is kept.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/stitch"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def stitch(
    model: str,
    small: str,
    sampler: str,
    steps: int,
    schedule: str | None,
    fractions: str,
    tune_at: str | None,
    tune_iters: int,
    n: int,
    batch: int,
    repeats: int,
    out: Path,
    quiet: bool,
) -> None:
    """T-Stitch (Pan et al. 2024): FD and time over the fraction of evaluations given to a small model."""
    from .io import check_output_dir
    from .experiments.stitch_report import StitchPlan, markdown, run_stitch

    check_output_dir(out)
    fr = _fractions(fractions)
    tune_fr = [] if tune_at is None else fr if tune_at == "all" else _fractions(tune_at)
    plan = StitchPlan(
        model=model,
        small=small,
        sampler=sampler,
        steps=steps,
        schedule=schedule,
        fractions=fr,
        tune_fractions=tune_fr,
        tune_iters=tune_iters,
        n=n,
        batch=min(batch, n),
        repeats=repeats,
    )
    try:
        data = run_stitch(plan, out, log=click.echo, progress=not quiet)
    except ValueError as exc:  # StitchError included: a bad fraction or small model
        raise click.ClickException(str(exc)) from None
    click.echo("\n" + markdown(data))
    click.echo(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'stitch.png'}")


@cli.command(short_help="Benchmark the tuning methods; tables, plots.")
@click.option("--quick", is_flag=True, help="A CI-sized smoke run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/bench"), show_default=True)
@click.option("--models", default=None, help="Comma-separated (default: all bundled).")
@click.option("--samplers", default=None, help="Comma-separated (default: native + importable k-diffusion ones).")
@click.option("--nfe", "nfes", default=None, help="Comma-separated NFEs (default: 4,5,6,8,10,15,20).")
@click.option(
    "--methods",
    default=None,
    help="Comma-separated (default: all but the ablations energy, ours-real, ours-classifier): untuned, time-shift, "
    "paper-seq, paper-par, final, trajectory, energy, ours, ours-classifier, ours-real, dode, schedule, joint, "
    "ours-full",
)
@click.option("--seeds", type=click.IntRange(1), default=None, help="Tuning seeds per method (default 3).")
@click.option("--n", "n", type=click.IntRange(50), default=None, help="Evaluation samples (default 1000).")
@click.option(
    "--update-readme",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Rewrite the generated results section (<!-- bench:start/end -->) in this file, e.g. docs/results.md.",
)
@click.option(
    "--merge",
    "merge",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Run nothing: combine these results.json files (repeat the option) into one report in --out.",
)
@click.option("--resume", is_flag=True, help="Keep the results already in --out and run only what they lack.")
@_device_option
def bench(
    quick: bool,
    out: Path,
    models: str | None,
    samplers: str | None,
    nfes: str | None,
    methods: str | None,
    seeds: int | None,
    n: int | None,
    update_readme: Path | None,
    merge: tuple[Path, ...],
    resume: bool,
    device: str,
) -> None:
    """Side-by-side benchmark of the tuning methods on the bundled models; JSON, Markdown and plots."""
    from .experiments import bench as b
    from .io import check_output_dir

    check_output_dir(out)
    if update_readme is not None:
        b.check_readme(update_readme)
    if merge:
        try:
            data = b.merge(list(merge), out)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            raise click.ClickException(f"cannot merge {', '.join(map(str, merge))}: {exc}") from None
        click.echo(f"merged {len(merge)} runs into {out / 'results.json'} and {out / 'results.md'}")
        if update_readme:
            _update_readme(b, update_readme, data, out)
        return

    plan = b.quick_plan() if quick else b.default_plan()
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    if models:
        plan.models = split(models)
    if samplers:
        plan.samplers = split(samplers)
    if nfes:
        plan.nfes = [int(v) for v in split(nfes)]
    if methods:
        unknown = [m for m in split(methods) if m not in b.METHODS]
        if unknown:
            raise click.BadParameter(f"unknown method(s) {unknown}; choose from {', '.join(b.METHODS)}")
        plan.methods = split(methods)
    if seeds:
        plan.seeds = list(range(seeds))
    if n:
        plan.n = n
    from .devices import resolve_device

    try:
        plan.device = str(resolve_device(device))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    for name in plan.models:
        registry.get_model_spec(name)
    for name in plan.samplers:
        registry.get_sampler(name)
    try:
        data = b.run_bench(plan, out, log=click.echo, resume=resume)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots in {data['seconds']:.0f} s")
    if update_readme:
        _update_readme(b, update_readme, data, out)


@cli.command(name="bench-scale", short_help="Memory and time per tuning iteration, real architectures.")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("out/bench-scale"), show_default=True
)
@click.option(
    "--curves/--no-curves",
    default=True,
    show_default=True,
    help="SD1.5's layout at a fifth of its widths: NFE 4/8/16 with and without recompute, batch, resolution.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Also SD1.5 at full size (860 M parameters, ~3.5 GB of weights; minutes "
    "per iteration on a CPU), NFE 8, 32² latent, batch 2 in passes of one sample (two rows with CFG), with and without recompute.",
)
@click.option(
    "--estimate",
    is_flag=True,
    help="Also count SD1.5, SDXL, SD3 and Flux at their default image sizes in "
    "half precision on fake tensors (nothing allocated): weights, "
    "activations per evaluation, projected peaks.",
)
@click.option(
    "--allocator",
    default="system",
    show_default=True,
    metavar="system|jemalloc|PATH",
    help="The C allocator of each point's process (CPU): the system's, jemalloc, or a library's path. glibc's "
    "heap grows with NFE under recompute where jemalloc's stays flat (docs/scale.md).",
)
@_device_option
def bench_scale(out: Path, curves: bool, full: bool, estimate: bool, allocator: str, device: str) -> None:
    """Peak memory and seconds per tuning iteration against NFE, batch, resolution and recompute (each point in a
    fresh process), on diffusers' SD1.5 U-Net built from its published config with random weights."""
    from .experiments import bench_scale as bs
    from .io import atomic_path, check_output_dir
    from .devices import resolve_device

    check_output_dir(out)
    try:
        env = bs.preload(allocator)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allocator") from None
    where = str(resolve_device(device))
    points = bs.curve_points(device=where) if curves else []
    if full:
        points += [
            bs.Point("sd15", 8, batch=2, micro_batch=1, latent=32, recompute=r, iters=1, device=where)
            for r in (True, False)
        ]
    if points:
        results = bs.run(points, out, log=click.echo, env=env)
        bs.plot(results, out / "memory_time.png")
        click.echo(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'memory_time.png'}")
    if estimate:
        rows = bs.estimates(log=click.echo)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("estimates.json", json.dumps(rows, indent=1)),
            ("estimates.md", bs.estimates_markdown(rows)),
        ):
            with atomic_path(out / name, overwrite=True) as tmp:
                tmp.write_text(text + "\n")
        click.echo(f"wrote {out / 'estimates.json'} and {out / 'estimates.md'}")


def _update_readme(b, readme: Path, data: dict, out: Path) -> None:
    try:
        b.update_readme(readme, data, out)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{exc}; the results are in {out}") from None
    click.echo(f"updated {readme}")


@cli.command(short_help="Recover the noise of BDIA samples exactly.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="States to invert: .safetensors or .pt with 'sample' (and 'previous', the state before it), "
    "or a bare sample tensor (.pt).",
)
@click.option(
    "--generate",
    "generate_n",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Instead of inverting: write N BDIA samples, the state before each and their noise to --out.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output .safetensors or .pt: the recovered noise (or, with --generate, the samples).",
)
@click.option("--model", default=None, help="Model (default: the one recorded in --input).")
@click.option(
    "--sampler",
    type=click.Choice(["bdia_ddim", "bdia_edm"]),
    default=None,
    help="BDIA variant (default: the one recorded in --input, else bdia_ddim).",
)
@click.option("--steps", type=click.IntRange(1), default=None, help="Sampler steps (default: recorded in --input).")
@click.option("--schedule", default=None, help="σ schedule (default: recorded in --input, else the model's).")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Sampler option, repeatable (gamma, frame, backward); default: recorded in --input.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed for --generate.")
@click.option("--float64", "use_float64", is_flag=True, help="Run the model and states in float64.")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Re-sample from the recovered noise and report the round-trip error.",
)
@click.option(
    "--previous-iters",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Without a 'previous' state: fixed-point iterations of the DDIM inversion that estimates it.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_device_option
def invert(
    input_path: Path | None,
    generate_n: int | None,
    out: Path,
    model: str | None,
    sampler: str | None,
    steps: int | None,
    schedule: str | None,
    options: tuple[str, ...],
    seed: int,
    use_float64: bool,
    check: bool,
    previous_iters: int,
    overwrite: bool,
    as_json: bool,
    device: str,
) -> None:
    """Recover the initial noise of BDIA samples exactly (Zhang et al., ECCV 2024), or --generate some."""
    import torch

    from .sampling import invert as inv
    from .sampling.option_checks import SamplerOptionError
    from .sampling.run import make_sigmas
    from .devices import model_device

    if (input_path is None) == (generate_n is None):
        raise click.UsageError("give exactly one of --input FILE (to invert) or --generate N (to write samples)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it or --out to choose another file")
    try:
        tensors, meta = inv.read_states(input_path) if input_path else ({}, {})
        model = model or meta.get("model")
        if not model:
            raise click.UsageError("give --model: the input records none")
        sampler = sampler or meta.get("sampler", "bdia_ddim")
        if sampler not in inv.SAMPLERS:
            raise click.UsageError(f"the input was made by {sampler!r}; only {', '.join(inv.SAMPLERS)} invert exactly")
        steps = steps or (int(meta["steps"]) if "steps" in meta else None)
        if steps is None:
            raise click.UsageError("give --steps: the input records no step count")
        m = _load_model(model, device)
        schedule = schedule or meta.get("schedule") or m.default_schedule
        spec = registry.get_sampler(sampler)
        recorded = json.loads(meta["options"]) if "options" in meta else {}
        opts = spec.options({**recorded, **_parse_options(options)})
        torch_dtype = torch.float64 if use_float64 else torch.float32
        dtype = str(torch_dtype).removeprefix("torch.")
        if use_float64:
            m = m.double()
        where = model_device(m)
        sigmas = make_sigmas(m, schedule, steps)
        run = inv.run_meta(model, sampler, schedule, steps, opts)
        if generate_n is not None:
            shape = (generate_n, *m.sample_shape)
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            written = inv.generate(m, sampler, sigmas, noise.to(where, torch_dtype), opts)
            inv.write_states(out, written, {**run, "seed": str(seed), "dtype": dtype}, overwrite=overwrite)
            _emit(
                {"out": str(out), "n": generate_n, **run},
                as_json,
                f"wrote {out}: {generate_n} {sampler} samples of {model} ({schedule}, {steps} steps, "
                f"{', '.join(f'{k}={v}' for k, v in opts.items())}) with their previous states and noise",
            )
            return
        states = {k: v.to(where, torch_dtype) for k, v in tensors.items()}
        if states["sample"].shape[1:] != tuple(m.sample_shape):
            raise click.UsageError(
                f"samples have shape {tuple(states['sample'].shape[1:])} but {model} makes {tuple(m.sample_shape)}"
            )
        result, report = inv.invert(m, sampler, sigmas, states, opts, previous_iters=previous_iters, check=check)
        report = {"input": str(input_path), "out": str(out), "model": model, "schedule": schedule, **report}
        inv.write_states(
            out,
            result,
            {
                **run,
                "dtype": dtype,
                **({"round_trip_sample_max_abs": str(report["round_trip_sample_max_abs"])} if check else {}),
            },
            overwrite=overwrite,
        )
    except (SamplerOptionError, inv.StatesFileError) as exc:
        raise click.ClickException(str(exc)) from None
    lines = [
        f"wrote {out}: the noise of {len(result['noise'])} samples ({sampler}, {schedule}, {steps} steps, "
        f"{', '.join(f'{k}={v}' for k, v in opts.items())}, {dtype}); previous state {report['previous']}"
    ]
    if check:
        lines.append(
            f"  round trip from (noise, next), max abs error: sample "
            f"{report['round_trip_sample_max_abs']:.3g}, previous {report['round_trip_previous_max_abs']:.3g} "
            f"(samples up to {report['sample_max_abs']:.3g})"
        )
        lines.append(
            f"  from the noise alone: sample {report['noise_alone_sample_max_abs']:.3g} (exact only for "
            f"samples a BDIA run made; otherwise keep 'next')"
        )
        if "noise_max_abs_error" in report:
            lines.append(f"  recovered noise vs the file's noise, max abs error: {report['noise_max_abs_error']:.3g}")
    _emit(report, as_json, "\n".join(lines))


SHIM = '''"""TimeTuner nodes for ComfyUI, written by `timetuner comfyui-install` (the package is pip-installed)."""
from comfyui_nodes import WEB_DIRECTORY, comfy_entrypoint  # noqa: F401
'''


@cli.command(name="comfyui-install", short_help="Hook a pip install into a ComfyUI folder.")
@click.argument("comfyui", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace an existing custom_nodes/timetuner.")
def comfyui_install(comfyui: Path, overwrite: bool) -> None:
    """Make a pip-installed timetuner load in the ComfyUI at COMFYUI (run it with ComfyUI's Python)."""
    nodes = comfyui / "custom_nodes"
    if not (comfyui / "main.py").is_file() or not nodes.is_dir():
        raise click.BadParameter(f"{comfyui} has no main.py and custom_nodes/: give the ComfyUI folder")
    target = nodes / "timetuner"
    if target.exists() and not overwrite:
        raise click.ClickException(f"{target} exists (a git clone?); pass --overwrite to replace its __init__.py")
    target.mkdir(exist_ok=True)
    from .io import atomic_path

    with atomic_path(target / "__init__.py", overwrite=True) as tmp:
        tmp.write_text(SHIM)
    click.echo(f"wrote {target / '__init__.py'}; restart ComfyUI. Nodes appear under sampling/timetuner.")


def main() -> None:
    cli(prog_name="timetuner")
