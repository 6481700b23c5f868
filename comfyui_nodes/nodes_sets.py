"""Nodes: Load Tuned Set, Apply Tuned Set, Tuned Sigmas."""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io, ui

import folder_paths
from timetuner_plugins.sets import shipped
from timetuner_plugins.sets.tuned_set import TunedSet

from . import paths
from .model_patch import apply_tuned_set, check_model, warn

CATEGORY = "sampling/timetuner"
TunedSetType = io.Custom("TUNED_SET")


def user_folders() -> list[Path]:
    return [Path(p) for p in folder_paths.get_folder_paths(paths.FOLDER)]


def describe(ts: TunedSet) -> str:
    """The set's provenance: model, sampler, scheduler, steps, how it was tuned and what it gained."""
    after, before, extra = ts.metrics_after, ts.metrics_before, ts.extra
    space = extra.get("model") or {"space": "ve"}
    where = (
        f"flow, shift {space['shift']:g}"
        if space.get("space") == "flow" and "shift" in space
        else space.get("space", "ve").upper()
    )
    denoise = extra.get("denoise")
    lines = [
        f"model: {ts.model_id} ({where}; fingerprint {ts.model_fingerprint[:12]}…)",
        f"sampler: {ts.sampler}" + (f" {ts.sampler_options}" if ts.sampler_options else ""),
        (
            f"tau function: any steps with NFE {ts.function_range['nfe'][0]}-{ts.function_range['nfe'][1]}, tuned on "
            f"{', '.join(ts.function_range['schedules'])}; shown below at its representative run"
            if ts.is_function
            else ""
        ),
        f"scheduler: {ts.schedule}, {ts.steps} steps"
        + (f", denoise {denoise:g}" if denoise not in (None, 1.0) else "")
        + f", NFE {ts.nfe}"
        + (f", cfg {extra['cfg']:g}" if isinstance(extra.get("cfg"), (int, float)) else ""),
        f"tuned: objective {ts.objective} ({ts.mode}), {ts.iterations} iterations, seed {ts.seed}, "
        f"{'in ComfyUI' if extra.get('host') == 'comfyui' else 'timetuner'} {ts.library_version}, {ts.created}",
        "sigmas: " + ", ".join(f"{s:.4g}" for s in ts.sigmas.tolist()),
        "tau/sigma: " + ", ".join(f"{r:.3f}" for r in (ts.tau / ts.eval_sigmas).tolist()),
    ]
    lines = [line for line in lines if line]
    if ts.dode_lambda is not None:
        lines.append("D-ODE lambda: " + ", ".join(f"{v:.3f}" for v in ts.dode_lambda.tolist()))
    for key in ("fd", "traj_err"):
        if isinstance(before.get(key), (int, float)) and isinstance(after.get(key), (int, float)):
            lines.append(f"{key} {before[key]:.4g} -> {after[key]:.4g} (untuned -> tuned)")
    selection = extra.get("selection") or {}
    if isinstance(selection.get("untuned"), (int, float)) and isinstance(selection.get("best"), (int, float)):
        lines.append(
            f"validation {selection.get('metric', 'score')}: {selection['untuned']:.4g} -> "
            f"{selection['best']:.4g} (untuned -> best tuned)"
        )
    if selection.get("fallback_identity"):
        lines.append("identity: tuning did not validate better than the plain sampler")
    return "\n".join(lines)


def load(name: str) -> TunedSet:
    path, entry = paths.resolve(name, user_folders())
    return shipped.load(entry) if entry is not None else TunedSet.load(path)


class LoadTunedSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerLoadTunedSet",
            display_name="Load Tuned Set",
            category=CATEGORY,
            is_output_node=True,
            description="A τ set from the shipped tuned_sets/ or your models/timetuner/ folder; shows its metadata.",
            inputs=[io.Combo.Input("tuned_set", options=paths.choices(user_folders()))],
            outputs=[TunedSetType.Output(display_name="TUNED_SET")],
        )

    @classmethod
    def validate_inputs(cls, tuned_set: str) -> bool | str:
        try:
            paths.resolve(tuned_set, user_folders())
        except (paths.UnsafePath, FileNotFoundError) as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, tuned_set: str) -> str:
        try:
            path, _ = paths.resolve(tuned_set, user_folders())
            return f"{path}:{path.stat().st_mtime_ns}:{path.stat().st_size}"
        except (paths.UnsafePath, OSError):
            return tuned_set

    @classmethod
    def execute(cls, tuned_set: str) -> io.NodeOutput:
        ts = load(tuned_set)
        return io.NodeOutput(ts, ui=ui.PreviewText(describe(ts)))


class ApplyTunedSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerApplyTunedSet",
            display_name="Apply Tuned Set",
            category=CATEGORY,
            description="Condition the model's network on the set's τ at each matching σ (only the noise "
            "conditioning moves; a set with D-ODE λ also extrapolates each output from the run's "
            "previous one). Works under KSampler, KSamplerAdvanced and SamplerCustomAdvanced with every "
            "sampler the set's σ's fit. A set for another model, shift or schedule is a warning and the "
            "plain model, or an error with 'strict'.",
            inputs=[
                io.Model.Input("model"),
                TunedSetType.Input("tuned_set"),
                io.Boolean.Input(
                    "strict",
                    default=False,
                    tooltip="Error when the set doesn't fit (another model or shift, or a run's "
                    "sigmas); off: a warning and the plain model",
                ),
                io.Boolean.Input(
                    "force", default=False, tooltip="Apply a set tuned for a different model or shift anyway (warned)"
                ),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, tuned_set: TunedSet, strict: bool, force: bool) -> io.NodeOutput:
        problem = check_model(tuned_set, model, force, strict)
        if problem:
            warn(f"{problem}; the model is left WITHOUT the tuned set (turn on 'force' to apply it anyway).")
            return io.NodeOutput(model)
        return io.NodeOutput(apply_tuned_set(model, tuned_set, strict=strict))


class TunedSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerTunedSigmas",
            display_name="Tuned Sigmas",
            category=CATEGORY,
            description="The σ schedule the set was tuned on; denoise < 1 keeps its last steps.",
            inputs=[
                TunedSetType.Input("tuned_set"),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, tuned_set: TunedSet, denoise: float) -> io.NodeOutput:
        sigmas = tuned_set.sigmas.float()
        if denoise <= 0:
            return io.NodeOutput(torch.zeros(0))
        keep = max(1, round(tuned_set.steps * denoise))
        return io.NodeOutput(sigmas[-(keep + 1) :].clone())
