"""Nodes: Registry Sampler, Tune (KSampler-style inputs), Tune with Sigmas."""

from __future__ import annotations

import contextlib
import inspect
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import registry
from registry.specs import SAMPLER_ARGS
from timetuner_plugins.tuning.checkpoint import CheckpointError
from timetuner_plugins.sampling.comfy_samplers import PREFIX
from timetuner_plugins.tuning.pipeline import tune_set
from timetuner_plugins.tuning.tuner import RECOMPUTE_PARAMETERS, TuneConfig

from . import paths
from .model_patch import install_timestep, model_fingerprint, sampling_of
from .nodes_sets import CATEGORY, TunedSetType, describe
from .sampling import ComfyDenoiser, sampler_function

OBJECTIVES = ["energy", "final", "trajectory", "paper"]
RECOMPUTE = ["auto", "blocks", "evaluation", "off"]
NOT_OPTIONS = {"noise_sampler", "noise", "tau_func", "noise_scaler"}  # callables / the start: not user options
MEMORY_NOTE = (
    "auto: networks of 20 M parameters or more (SDXL, SD3, Flux, Wan) tune one sample per pass (micro_batch 1, the "
    "same gradient as the whole batch in more passes) with activations recomputed per evaluation and per network "
    "block ('blocks'): the peak is the weights, the inputs of each block of one evaluation and one block's "
    "activations for one sample (two rows with CFG) - meant to fit SDXL at 1024x1024 and a Flux-class model with "
    "fp8 weights on a 24 GB GPU (an estimate, not measured here). Small networks run whole batches, no recompute."
)


def sampler_names(tunable: bool = False) -> list[str]:
    return sorted(name for name, spec in registry.samplers().items() if spec.tunable or not tunable)


def _default_sampler(names: list[str]) -> str:
    for name in (PREFIX + "euler", "ddim"):
        if name in names:
            return name
    return names[0]


# ----- Registry Sampler: typed options from each sampler's declared defaults ---------------------------------


def _declared(spec) -> dict[str, Any]:
    """The options ``spec`` declares with a plain default (bool, int, finite float, str), its own defaults over
    the function's."""
    out: dict[str, Any] = {}
    for p in inspect.signature(spec.fn).parameters.values():
        if p.name in SAMPLER_ARGS or p.name in NOT_OPTIONS or p.default is inspect.Parameter.empty:
            continue
        out[p.name] = p.default
    out.update({k: v for k, v in spec.defaults.items() if k not in NOT_OPTIONS})
    return {
        k: v for k, v in out.items() if isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v))
    }


def option_table() -> tuple[dict[str, dict[str, Any]], dict[str, type]]:
    """(per sampler: its typed options and defaults, per option name: its widget type)."""
    per_sampler, kinds = {}, {}
    for name, spec in sorted(registry.samplers().items()):
        declared = _declared(spec)
        per_sampler[name] = declared
        for option, value in declared.items():
            kind = bool if isinstance(value, bool) else type(value)
            if option in kinds and kinds[option] is not kind:
                kinds[option] = float if {kinds[option], kind} <= {int, float} else str
            else:
                kinds.setdefault(option, kind)
    return per_sampler, kinds


def option_inputs(per_sampler: dict[str, dict[str, Any]], kinds: dict[str, type]) -> list:
    inputs = []
    for option, kind in sorted(kinds.items()):
        users = [n for n, d in per_sampler.items() if option in d]
        default = per_sampler[users[0]][option]
        tip = f"Option of {', '.join(users[:6])}{' ...' if len(users) > 6 else ''}; used only by samplers that take it"
        if kind is bool:
            inputs.append(io.Boolean.Input(option, default=bool(default), optional=True, tooltip=tip))
        elif kind is int:
            inputs.append(io.Int.Input(option, default=int(default), min=-10000, max=10000, optional=True, tooltip=tip))
        elif kind is float:
            inputs.append(
                io.Float.Input(
                    option, default=float(default), min=-1000.0, max=1000.0, step=0.001, optional=True, tooltip=tip
                )
            )
        else:
            inputs.append(io.String.Input(option, default=str(default), optional=True, tooltip=tip))
    return inputs


def chosen_options(spec, given: dict[str, Any]) -> dict[str, Any]:
    """The typed inputs that ``spec`` takes (others belong to other samplers), cast to its declared types."""
    declared = _declared(spec)
    out = {}
    for k, v in given.items():
        if k in declared and v is not None:
            out[k] = type(declared[k])(v) if not isinstance(declared[k], bool) else bool(v)
    return out


class RegistrySampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = sampler_names()
        per_sampler, kinds = option_table()
        combo = io.Combo.Input(
            "sampler_name",
            options=names,
            default=_default_sampler(names),
            tooltip="Any registered sampler: timetuner's, ComfyUI's own (comfy.*), plugins'",
        )
        combo.extra_dict = {"timetuner_options": per_sampler}  # the web extension shows each sampler's own options
        return io.Schema(
            node_id="TimeTunerRegistrySampler",
            display_name="Registry Sampler",
            category=CATEGORY,
            description="Any sampler from the timetuner registry (ComfyUI's own as comfy.*, third-party plugins "
            "included) as a SAMPLER, with typed inputs for its options; with a TUNED_SET it applies τ per "
            "counted network evaluation.",
            inputs=[
                combo,
                io.Boolean.Input(
                    "strict",
                    default=False,
                    tooltip="Error when the run doesn't match the tuned set (else: warn, run plainly)",
                ),
                TunedSetType.Input("tuned_set", optional=True),
                *option_inputs(per_sampler, kinds),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str, **_: Any) -> bool | str:
        try:
            registry.get_sampler(sampler_name)
        except registry.UnknownNameError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, sampler_name: str, strict: bool, tuned_set=None, **options: Any) -> io.NodeOutput:
        spec = registry.get_sampler(sampler_name)
        fn = sampler_function(spec, tuned_set, strict)
        return io.NodeOutput(comfy.samplers.KSAMPLER(fn, extra_options=chosen_options(spec, options)))


# ----- Tune --------------------------------------------------------------------------------------------------


def _tune_inputs() -> list:
    return [
        io.Combo.Input(
            "objective",
            options=OBJECTIVES,
            default="energy",
            tooltip="energy: match the teacher's distribution (default); final / trajectory: per-sample "
            "error to the teacher; paper: TimeTuner's per-interval loss",
        ),
        io.Int.Input(
            "iterations",
            default=120,
            min=1,
            max=100000,
            tooltip="Adam steps; validation every iterations/8 keeps the best and may stop early",
        ),
        io.Int.Input("batch", default=16, min=2, max=4096, tooltip="Samples per step (the loss compares them)"),
        io.Int.Input("pool", default=64, min=2, max=1 << 20, tooltip="Teacher noises kept for training"),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
        io.Int.Input(
            "micro_batch",
            default=0,
            min=0,
            max=4096,
            tooltip="Samples per forward/backward pass, same result (0 = auto). " + MEMORY_NOTE,
        ),
        io.Combo.Input(
            "recompute",
            options=RECOMPUTE,
            default="auto",
            tooltip="Recompute activations in the backward pass: per network 'blocks' (and per "
            "evaluation), per 'evaluation', or 'off'. " + MEMORY_NOTE,
        ),
        io.String.Input("filename", default="my_tuned_set", tooltip="Saved as models/timetuner/<filename>.safetensors"),
        io.Boolean.Input("overwrite", default=False),
        io.Boolean.Input(
            "resume",
            default=True,
            tooltip="Continue from the checkpoint a cancelled run with the same settings left beside the "
            "file (<filename>.safetensors.ckpt); off: start over",
        ),
    ]


def _validate(sampler_name: str, objective: str, filename: str) -> bool | str:
    if objective not in OBJECTIVES:
        return f"objective must be one of {', '.join(OBJECTIVES)}"
    try:
        spec = registry.get_sampler(sampler_name)
        paths.output_path(Path("."), filename)
    except (registry.UnknownNameError, paths.UnsafePath) as exc:
        return str(exc)
    if not spec.tunable:
        return f"sampler {sampler_name!r} cannot be tuned: {spec.untunable_reason}"
    return True


class Tune(io.ComfyNode):
    """KSampler's choices: sampler, scheduler, steps, denoise; the σ's are what KSampler computes for them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = sampler_names(tunable=True)
        return io.Schema(
            node_id="TimeTunerTuneKSampler",
            display_name="Tune (TimeTuner)",
            category=CATEGORY,
            is_output_node=True,
            description="Train τ for a sampler + scheduler + steps + denoise exactly as KSampler runs them (ComfyUI's "
            "own samplers as comfy.*), data-free against the model's own high-NFE teacher, on the model's "
            "device, with ComfyUI's progress bar and Cancel; saves to models/timetuner/.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image", tooltip="Its size sets the tuning resolution"),
                io.Combo.Input("sampler_name", options=names, default=_default_sampler(names)),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple"),
                io.Int.Input("steps", default=10, min=1, max=200),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1),
                *_tune_inputs(),
            ],
            outputs=[TunedSetType.Output(display_name="TUNED_SET")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str, objective: str, filename: str, **_: Any) -> bool | str:
        return _validate(sampler_name, objective, filename)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        latent_image,
        sampler_name: str,
        scheduler: str,
        steps: int,
        denoise: float,
        cfg: float,
        **settings: Any,
    ) -> io.NodeOutput:
        sigmas = ksampler_sigmas(model, sampler_name, scheduler, steps, denoise)
        return run_tune_node(
            model,
            positive,
            negative,
            cfg,
            sampler_name,
            sigmas,
            latent_image,
            scheduler,
            {"scheduler": scheduler, "denoise": denoise, "steps_asked": steps},
            **settings,
        )


class TuneWithSigmas(io.ComfyNode):
    """The same with a SIGMAS input: AlignYourSteps, GITS, OptimalSteps or any custom σ's."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = sampler_names(tunable=True)
        return io.Schema(
            node_id="TimeTunerTune",
            display_name="Tune with Sigmas (TimeTuner)",
            category=CATEGORY,
            is_output_node=True,
            description="Train τ for a sampler on this SIGMAS (AlignYourSteps, GITS, OptimalSteps, custom), data-free "
            "against the model's own high-NFE teacher; apply it with the same SIGMAS under "
            "SamplerCustomAdvanced. Saves to models/timetuner/.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1),
                io.Combo.Input("sampler_name", options=names, default=_default_sampler(names)),
                io.Sigmas.Input("sigmas"),
                io.Latent.Input("latent_image"),
                io.String.Input(
                    "schedule_name",
                    default="custom",
                    tooltip="What the σ's are, recorded in the set (e.g. AlignYourSteps, GITS)",
                ),
                *_tune_inputs(),
            ],
            outputs=[TunedSetType.Output(display_name="TUNED_SET")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name: str, objective: str, filename: str, **_: Any) -> bool | str:
        return _validate(sampler_name, objective, filename)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        cfg: float,
        sampler_name: str,
        sigmas: torch.Tensor,
        latent_image,
        schedule_name: str = "custom",
        **settings: Any,
    ) -> io.NodeOutput:
        label = schedule_name.strip() or "custom"
        return run_tune_node(
            model, positive, negative, cfg, sampler_name, sigmas, latent_image, label, {"scheduler": label}, **settings
        )


def ksampler_sigmas(model, sampler_name: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """The σ's ComfyUI's KSampler runs for these choices (its penultimate-σ rule for DPM-2 and UniPC included), by
    ComfyUI's own KSampler; a registry sampler named like one of ComfyUI's follows that one's rule."""
    bare = sampler_name[len(PREFIX) :] if sampler_name.startswith(PREFIX) else sampler_name
    ks = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=bare, scheduler=scheduler, denoise=denoise)
    return ks.sigmas.detach().float().cpu()


def run_tune_node(
    model,
    positive,
    negative,
    cfg: float,
    sampler_name: str,
    sigmas: torch.Tensor,
    latent_image,
    schedule: str,
    records: dict,
    objective: str,
    iterations: int,
    batch: int,
    pool: int,
    seed: int,
    micro_batch: int,
    recompute: str,
    filename: str,
    overwrite: bool,
    resume: bool,
) -> io.NodeOutput:
    folder = Path(folder_paths.get_folder_paths(paths.FOLDER)[0])
    out = paths.output_path(folder, filename)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out.name} exists in {folder}; turn 'overwrite' on or choose another filename")
    if len(sigmas) < 2:
        raise ValueError("the schedule has no steps (denoise 0, or an empty SIGMAS)")
    spec = registry.get_sampler(sampler_name)
    big = network_parameters(model) >= RECOMPUTE_PARAMETERS
    mode = ("blocks" if big else "off") if recompute == "auto" else recompute
    rows = micro_batch or (1 if big else None)
    config = TuneConfig(
        objective=objective,
        iters=iterations,
        batch=batch,
        pool=max(pool, batch),
        seed=seed,
        show_progress=False,
        val_size=max(2, min(4 * batch, 256)),
        teacher_substeps=10,
        validate_every=max(1, iterations // 8),
        checkpoint_every=5,
        micro_batch=None if rows is None or rows >= batch else rows,
        recompute="off" if mode == "off" else "on",
    )
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    checkpoint = out.with_name(out.name + ".ckpt")
    if not resume:
        checkpoint.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"host": "comfyui", "cfg": cfg, **records, "memory": {"micro_batch": config.micro_batch, "recompute": mode}}
    result = tune_model(
        model,
        positive,
        negative,
        cfg,
        spec,
        sigmas,
        latent,
        config,
        schedule=schedule,
        extra=extra,
        checkpoint=checkpoint,
        resume=resume and checkpoint.exists(),
        blocks=mode == "blocks",
    )
    result.save(out, overwrite=overwrite)
    return io.NodeOutput(result, ui=ui.PreviewText(f"saved {out.name}\n" + describe(result)))


def network_parameters(model) -> int:
    return sum(p.numel() for p in model.model.diffusion_model.parameters())


def _ordinary(value: Any) -> Any:
    """``value`` with every tensor in it an ordinary tensor (ComfyUI builds conditioning in inference mode)."""
    if torch.is_tensor(value):
        return value.clone() if value.is_inference() else value
    if isinstance(value, dict):
        return {k: _ordinary(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_ordinary(v) for v in value)
    return value


def ordinary_weights(module: torch.nn.Module) -> int:
    """Turn the module's inference-mode parameters and buffers (what a checkpoint loaded or moved to the GPU inside
    ComfyUI's execution is) into ordinary tensors in place, one at a time, so autograd can save them; returns how
    many it changed."""
    changed = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    changed += 1
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
                    changed += 1
    return changed


def network_blocks(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The blocks of the network's block lists (ModuleList / Sequential children, entered while they nest: a U-Net
    level's TimestepEmbedSequential is walked layer by layer, as ComfyUI's U-Net calls it)."""

    def leaves(container: torch.nn.Module) -> Iterator[torch.nn.Module]:
        for block in container:
            if isinstance(block, (torch.nn.ModuleList, torch.nn.Sequential)):
                yield from leaves(block)
            else:
                yield block

    for child in net.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            yield from leaves(child)


@contextlib.contextmanager
def checkpointed_blocks(net: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """While active, each block of the network's block lists (U-Net levels, transformer blocks) keeps only its
    inputs for the backward pass and recomputes its activations there."""
    patched = []
    if enabled:
        for block in network_blocks(net):
            original = block.forward

            def forward(*args, _original=original, **kwargs):
                if not torch.is_grad_enabled():
                    return _original(*args, **kwargs)
                return torch.utils.checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)

            block.forward = forward
            patched.append(block)
    try:
        yield
    finally:
        for block in patched:
            del block.forward  # back to the class's own method


def tune_model(
    model,
    positive,
    negative,
    cfg: float,
    spec,
    sigmas: torch.Tensor,
    latent: torch.Tensor,
    config: TuneConfig,
    schedule: str = "custom",
    extra: dict | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    blocks: bool = False,
):
    """Run the generic tuner inside ComfyUI's sampling machinery (conditioning prepared, model on its device), with
    ComfyUI's progress bar and Cancel (checked before every network evaluation and after every iteration; a
    cancelled run writes nothing but its checkpoint); returns the tuned set."""
    pbar = comfy.utils.ProgressBar(config.iters)
    fingerprint = model_fingerprint(model)
    base = model.model
    model_id = getattr(base, "bundled_name", None) or type(getattr(base, "model_config", base)).__name__
    count = network_parameters(model)
    found = {}

    def progress(done: int, total: int) -> None:
        pbar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    def tune_inside(model_k, x, run_sigmas, extra_args=None, callback=None, disable=None):
        ms = sampling_of(model_k)
        installed = not hasattr(ms.timestep, "forced")
        stand_in = install_timestep(ms)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                ordinary_weights(base)
                denoiser = ComfyDenoiser(
                    model_k,
                    stand_in,
                    tuple(latent.shape[1:]),
                    fingerprint,
                    model_id,
                    x.device,
                    count,
                    check=mm.throw_exception_if_processing_interrupted,
                )
                args = {**(extra_args or {}), "denoise_mask": None}  # tuning samples whole images (no inpaint mask)
                try:
                    with checkpointed_blocks(base.diffusion_model, blocks):
                        found["set"] = tune_set(
                            denoiser,
                            spec,
                            run_sigmas.detach().float().cpu().clone(),
                            schedule,
                            config,
                            extra_args=args,
                            eval_n=0,  # the node measures nothing: the workflow's own sampler shows the result
                            checkpoint=checkpoint,
                            resume=resume,
                            extra=extra,
                            on_iteration=progress,
                        ).tuned_set
                except CheckpointError as exc:
                    raise ValueError(f"{exc} (turn 'resume' off to start over)") from None
        finally:
            if installed:
                del ms.timestep
        return x

    with torch.inference_mode(False):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(_ordinary(positive), _ordinary(negative))
        guider.set_cfg(cfg)
        noise = torch.zeros_like(latent)
        guider.sample(
            noise, latent.clone(), comfy.samplers.KSAMPLER(tune_inside), sigmas, seed=config.seed, disable_pbar=True
        )
    mm.soft_empty_cache()
    return found["set"]
