"""Nodes: Registry Sampler, Tune."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import registry
from timetuner_plugins.tuner import TuneConfig, Tuner

from . import paths
from .model_patch import install_timestep, model_fingerprint, sampling_of
from .nodes_sets import CATEGORY, TunedSetType, describe
from .sampling import ComfyDenoiser, sampler_function

OBJECTIVES = ["energy", "final", "trajectory", "paper"]


def sampler_names() -> list[str]:
    return sorted(name for name, spec in registry.samplers().items())


def _options(text: str) -> dict:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"options must be a JSON object such as {{\"eta\": 0.5}}: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('options must be a JSON object such as {"eta": 0.5}')
    return value


class RegistrySampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerRegistrySampler", display_name="Registry Sampler", category=CATEGORY,
            description="Any sampler from the timetuner registry (third-party plugins included) as a SAMPLER; "
                        "with a TUNED_SET it applies τ per counted network evaluation.",
            inputs=[io.Combo.Input("sampler_name", options=sampler_names()),
                    io.String.Input("options", default="{}", tooltip='Sampler options as JSON, e.g. {"eta": 0.5}'),
                    io.Boolean.Input("strict", default=False,
                                     tooltip="Error when the run doesn't match the tuned set (else: warn, run plainly)"),
                    TunedSetType.Input("tuned_set", optional=True)],
            outputs=[io.Sampler.Output()])

    @classmethod
    def validate_inputs(cls, sampler_name: str, options: str = "{}", strict: bool = False) -> bool | str:
        try:
            registry.get_sampler(sampler_name)
            _options(options)
        except (registry.UnknownNameError, ValueError) as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, sampler_name: str, options: str, strict: bool, tuned_set=None) -> io.NodeOutput:
        spec = registry.get_sampler(sampler_name)
        fn = sampler_function(spec, tuned_set, strict)
        return io.NodeOutput(comfy.samplers.KSAMPLER(fn, extra_options=_options(options)))


class Tune(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerTune", display_name="Tune (TimeTuner)", category=CATEGORY, is_output_node=True,
            description="Train τ for a registry sampler on this model and σ schedule, data-free against the model's "
                        "own high-NFE teacher, on the model's device; saves to models/timetuner/.",
            inputs=[io.Model.Input("model"), io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1),
                    io.Combo.Input("sampler_name", options=sampler_names()),
                    io.Sigmas.Input("sigmas"), io.Latent.Input("latent_image"),
                    io.Combo.Input("objective", options=OBJECTIVES, default="energy"),
                    io.Int.Input("iterations", default=200, min=1, max=100000),
                    io.Int.Input("batch", default=16, min=2, max=4096),
                    io.Int.Input("pool", default=64, min=2, max=1 << 20, tooltip="Teacher noises kept for training"),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
                    io.String.Input("filename", default="my_tuned_set"),
                    io.Boolean.Input("overwrite", default=False)],
            outputs=[TunedSetType.Output(display_name="TUNED_SET")])

    @classmethod
    def validate_inputs(cls, sampler_name: str, objective: str, filename: str) -> bool | str:
        if objective not in OBJECTIVES:
            return f"objective must be one of {', '.join(OBJECTIVES)}"
        try:
            registry.get_sampler(sampler_name)
            paths.output_path(Path("."), filename)
        except (registry.UnknownNameError, paths.UnsafePath) as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, model, positive, negative, cfg: float, sampler_name: str, sigmas: torch.Tensor, latent_image,
                objective: str, iterations: int, batch: int, pool: int, seed: int, filename: str,
                overwrite: bool) -> io.NodeOutput:
        folder = Path(folder_paths.get_folder_paths(paths.FOLDER)[0])
        out = paths.output_path(folder, filename)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out.name} exists in {folder}; turn 'overwrite' on or choose another filename")
        spec = registry.get_sampler(sampler_name)
        config = TuneConfig(objective=objective, iters=iterations, batch=batch, pool=max(pool, batch), seed=seed,
                            show_progress=False, val_size=max(2, min(4 * batch, 256)), teacher_substeps=10,
                            validate_every=max(1, iterations // 8))
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        result = tune_model(model, positive, negative, cfg, spec, sigmas, latent, config)
        folder.mkdir(parents=True, exist_ok=True)
        result.save(out, overwrite=overwrite)
        return io.NodeOutput(result, ui=ui.PreviewText(f"saved {out.name}\n" + describe(result)))


def tune_model(model, positive, negative, cfg: float, spec, sigmas: torch.Tensor, latent: torch.Tensor,
               config: TuneConfig):
    """Run the generic tuner inside ComfyUI's sampling machinery (conditioning prepared, model on its
    device), with ComfyUI's progress bar; returns the tuned set."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    pbar = comfy.utils.ProgressBar(config.iters)
    fingerprint = model_fingerprint(model)
    model_id = getattr(model.model, "bundled_name", type(model.model.diffusion_model).__name__)
    found = {}

    def tune_inside(model_k, x, run_sigmas, extra_args=None, callback=None, disable=None):
        ms = sampling_of(model_k)
        installed = not hasattr(ms.timestep, "forced")
        stand_in = install_timestep(ms)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                denoiser = ComfyDenoiser(model_k, extra_args or {}, stand_in, tuple(latent.shape[1:]), fingerprint,
                                         model_id, x.device)
                tuner = Tuner(denoiser, spec, run_sigmas.detach().float().cpu().clone(), "comfyui", config)
                result = tuner.tune(progress=lambda done, total: pbar.update_absolute(done, total))
                found["set"] = result.tuned_set(denoiser, extra={"host": "comfyui", "cfg": cfg})
        finally:
            if installed:
                del ms.timestep
        return x

    noise = torch.zeros_like(latent)
    guider.sample(noise, latent, comfy.samplers.KSAMPLER(tune_inside), sigmas, seed=config.seed, disable_pbar=True)
    mm.soft_empty_cache()
    return found["set"]
