"""diffusers pipelines: use a tuned set in a pipeline, and load a saved pipeline or model folder for tuning.

Apply (:func:`apply_tuned_set`): a forward pre-hook on the pipeline's ``unet`` / ``transformer`` moves the
network's ``timestep`` argument to t(τ) for the evaluations the set covers; the pipeline, its scheduler and the
scheduler's arithmetic are left as they are. The evaluation is found by count where the scheduler counts its
steps (``step_index``; PNDM's ``counter``) — every network call of one denoising step, a split CFG included, gets
that step's τ —, and by σ matching otherwise (DDIM: the σ of the timestep's ᾱ). Checks:

- at apply: the network's fingerprint and σ space, the scheduler class against the set's sampler
  (``diffusers.<SchedulerClass>``), and the scheduler's settings against those the set was tuned with;
- at the first network call of each run (after the pipeline's ``set_timesteps``): the σ's of every evaluation
  the scheduler will make against the set's — another step count, image size (Flux's shift) or schedule is
  refused there, before the first evaluation.

A mismatch raises :class:`~timetuner_plugins.sets.tuned_set.TunedSetMismatch`; with ``force=True`` it is a warning
and the set is applied by σ matching (evaluations whose σ is not the set's keep their timestep). An identity
set leaves every timestep untouched, so the pipeline's output is bit for bit the plain one.
:func:`remove_tuned_set` removes the hook.

Load (:func:`load`, ``timetuner tune --model diffusers:PATH``): a folder written by ``save_pretrained`` — a
pipeline (``model_index.json``) or one model (``config.json`` of a supported class, with a
``scheduler_config.json`` beside it or in ``scheduler/``) —, loaded offline, as a tunable denoiser that carries its
conditioning: prompts encoded by the pipeline's own text encoders, or precomputed embeddings, and CFG.
"""

from __future__ import annotations

import json
import types
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch

from .diffusers import FLOW_CLASSES, VP_CLASSES, DiffusersCFGDenoiser, adapt, class_name, require_diffusers
from ..sets.tuned_set import SIGMA_RTOL, TunedSet, TunedSetError, TunedSetMismatch

FORCE_HINT = "pass force=True to apply it anyway (by σ matching)"


def network_of(pipe: Any) -> tuple[str, torch.nn.Module]:
    """The pipeline's denoising network: (attribute name, module)."""
    for attr in ("unet", "transformer"):
        net = getattr(pipe, attr, None)
        if net is not None and class_name(net) is not None:
            return attr, net
    raise TypeError(
        f"{type(pipe).__name__} has no unet or transformer of a supported class "
        f"({', '.join(VP_CLASSES + FLOW_CLASSES)})"
    )


def sampler_name(scheduler: Any) -> str:
    return f"diffusers.{type(scheduler).__name__}"


class TunedPipeline:
    """The handle :func:`apply_tuned_set` returns: ``remove()`` undoes it; ``calls`` lists (evaluation, timestep the
    pipeline passed, timestep the network got) for each network call since the last run started."""

    def __init__(self, pipe: Any, tuned: TunedSet, force: bool):
        from ..sampling import diffusers_samplers as ds

        self.pipe, self.tuned, self.force = pipe, tuned, force
        self.attr, self.network = network_of(pipe)
        self.adapter = adapt(self.network, pipe.scheduler.config)
        self.ratios = [float(r) for r in (tuned.tau.double() / tuned.eval_sigmas.double())]
        self.lookup = tuned.lookup()
        self.calls: list[tuple[int | None, Any, Any]] = []
        self._timesteps: Any = None
        self._matching = False
        self._ds = ds
        problems = self._apply_problems()
        if problems and not force:
            raise TunedSetMismatch(
                tuned.path, "; ".join(problems), f"Use a set tuned for this pipeline, or {FORCE_HINT}"
            )
        for problem in problems:
            warnings.warn(f"{tuned.path or 'tuned set'}: {problem} (applied anyway: force)", stacklevel=3)
        self._handle = self.network.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _apply_problems(self) -> list[str]:
        ts, scheduler = self.tuned, self.pipe.scheduler
        proxy = types.SimpleNamespace(
            fingerprint=self.adapter.fingerprint, model_id=self.adapter.model_id, space=self.adapter.space
        )  # no shift: the σ check at each run covers it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collected here, raised or warned once below
            problems = ts.check(model=proxy, sampler=sampler_name(scheduler), force=True)
        recorded = (ts.extra.get("model") or {}).get("diffusers_scheduler")
        entry = self._ds.BY_NAME.get(sampler_name(scheduler))
        if recorded is not None and entry is not None and ts.sampler == sampler_name(scheduler):
            tuned_cfg = self._ds.run_config(
                entry,
                types.SimpleNamespace(scheduler_config=recorded),
                (ts.sampler_options or {}).get("scheduler_config"),
            )
            ours = self._ds.run_config(entry, types.SimpleNamespace(scheduler_config=dict(scheduler.config)), None)
            differ = sorted(k for k in set(tuned_cfg) | set(ours) if tuned_cfg.get(k) != ours.get(k))
            if differ:
                shown = ", ".join(f"{k}: {_short(tuned_cfg.get(k))} → {_short(ours.get(k))}" for k in differ)
                problems.append(f"tuned with other {type(scheduler).__name__} settings than the pipeline's ({shown})")
        return problems

    def remove(self) -> None:
        self._handle.remove()
        if getattr(self.pipe, "_timetuner", None) is self:
            del self.pipe._timetuner

    # ----- per call --------------------------------------------------------------------------------------------
    def _start_run(self, scheduler: Any) -> None:
        self._timesteps, self.calls = scheduler.timesteps, []
        if type(scheduler).__name__ != self.tuned.sampler.removeprefix("diffusers.") and not self.force:
            raise TunedSetMismatch(
                self.tuned.path,
                f"tuned for sampler {self.tuned.sampler!r} but the pipeline's "
                f"scheduler is now {type(scheduler).__name__}",
                f"Apply a set tuned for it, or {FORCE_HINT}",
            )
        run = self._ds.read_plan(scheduler, final=False).eval_sigmas
        ev = self.tuned.eval_sigmas.double().tolist()
        same = len(run) == len(ev) and all(abs(a - b) <= SIGMA_RTOL * b for a, b in zip(run, ev))
        self._run_sigmas, self._matching = run, not same
        if not same:

            def fmt(v: list[float]) -> str:
                return "[" + ", ".join(f"{x:.4g}" for x in (v if len(v) <= 6 else v[:3] + v[-2:])) + "]"

            problem = (
                f"tuned for {len(ev)} evaluations at σ {fmt(ev)} but this run's scheduler makes {len(run)} at "
                f"{fmt(run)} (another step count, image size or schedule)"
            )
            if not self.force:
                raise TunedSetMismatch(
                    self.tuned.path,
                    problem,
                    f"Run with the set's {self.tuned.steps} steps and its image size, tune a set "
                    f"for this run, or {FORCE_HINT}",
                )
            warnings.warn(f"{self.tuned.path or 'tuned set'}: {problem}; applied by σ matching (force)", stacklevel=4)

    def _sigma_of(self, scheduler: Any, t: Any) -> float:
        index = getattr(scheduler, "step_index", None)
        if index is not None:
            return self._run_sigmas[index]
        abar = scheduler.alphas_cumprod.double()[int(torch.as_tensor(t).reshape(-1)[0])]
        return float(((1 - abar) / abar).sqrt())

    def _evaluation(self, scheduler: Any, t: Any) -> int | None:
        if not self._matching:
            if hasattr(scheduler, "step_index"):
                index = scheduler.step_index
                return index if index is not None else (getattr(scheduler, "begin_index", None) or 0)
            if hasattr(scheduler, "counter"):  # PNDM counts its steps this way
                return int(scheduler.counter)
        return self.lookup.index_of(self._sigma_of(scheduler, t))

    def _pre_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        scheduler = self.pipe.scheduler
        if scheduler.timesteps is not self._timesteps:  # set_timesteps ran: a new run
            self._start_run(scheduler)
        positional = "timestep" not in kwargs
        t = args[1] if positional else kwargs["timestep"]
        k = self._evaluation(scheduler, t)
        if k is None or k >= len(self.ratios) or self.ratios[k] == 1.0:
            self.calls.append((k, t, t))
            return None  # identity: the pipeline's own timestep, untouched
        sigma = self._run_sigmas[k] if not self._matching else self._sigma_of(scheduler, t)
        cond = torch.tensor(sigma * self.ratios[k], dtype=torch.float64)
        if self.adapter.space == "flow":
            value = float(cond.clamp(max=self.adapter.tau_max)) * self.adapter.multiplier
        else:
            value = float(self.adapter.sigma_to_t(cond))
        new = torch.full_like(t, value, dtype=torch.float32) if torch.is_tensor(t) else value
        self.calls.append((k, t, new))
        if positional:
            return (args[0], new, *args[2:]), kwargs
        return args, {**kwargs, "timestep": new}


def apply_tuned_set(pipe: Any, tuned: TunedSet | str | Path, *, force: bool = False) -> TunedPipeline:
    """Make ``pipe`` use a tuned set (a :class:`TunedSet` or its file) until :func:`remove_tuned_set`; replaces a
    set applied before. Refuses (:class:`TunedSetMismatch`) a set for another network, scheduler or settings here,
    and another step count or image size at the first network call of a run; ``force`` warns instead."""
    if not isinstance(tuned, TunedSet):
        tuned = TunedSet.load(tuned)
    if tuned.is_function:
        raise TunedSetError(
            tuned.path,
            "is a τ function set (one τ for a range of step counts), which diffusers pipelines cannot apply yet",
            "Apply it through the library or ComfyUI, or tune a set for this step count (timetuner tune --nfe K)",
        )
    remove_tuned_set(pipe)
    handle = TunedPipeline(pipe, tuned, force)
    pipe._timetuner = handle
    return handle


def remove_tuned_set(pipe: Any) -> bool:
    """Remove the tuned set :func:`apply_tuned_set` put on ``pipe``; False if there was none."""
    handle = getattr(pipe, "_timetuner", None)
    if handle is None:
        return False
    handle.remove()
    return True


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# ----- loading a saved folder for tuning ---------------------------------------------------------------------------

EMBED_KEYS = {  # diffusers' argument names in an embeddings file -> the adapters' extra arguments
    "prompt_embeds": "encoder_hidden_states",
    "negative_prompt_embeds": "negative_encoder_hidden_states",
    "pooled_prompt_embeds": "pooled",
    "negative_pooled_prompt_embeds": "negative_pooled",
    "add_time_ids": "time_ids",
    "text_ids": "txt_ids",
}


def _dtype(name: str | None) -> torch.dtype | None:
    if name in (None, ""):
        return None
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return table[name]


def load(
    path: str | Path,
    *,
    prompts: list[str] | None = None,
    negative_prompt: str | None = None,
    embeds: str | Path | dict | None = None,
    guidance_scale: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    dtype: str | torch.dtype | None = None,
    flux_guidance: float = 3.5,
    model_id: str | None = None,
) -> DiffusersCFGDenoiser:
    """A saved pipeline or model folder as a tunable denoiser with its conditioning (see the module docstring).

    ``prompts`` need a pipeline with its text encoders and tokenizers; ``embeds`` (a safetensors file or a dict
    under diffusers' names: ``prompt_embeds``, ``negative_prompt_embeds``, ``pooled_prompt_embeds``,
    ``negative_pooled_prompt_embeds``, SDXL's ``add_time_ids``) work with a model folder too. ``guidance_scale``
    above 1 is CFG (negative: the negative prompt, or the empty prompt, or ``negative_*`` embeddings).
    ``height`` / ``width`` are the image's pixels (default: the model's sample size)."""
    diffusers = require_diffusers()
    path = Path(path)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else _dtype(dtype)
    kwargs = {"local_files_only": True, **({"torch_dtype": torch_dtype} if torch_dtype else {})}
    if (path / "model_index.json").is_file():
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, **kwargs)
        return model_from_pipeline(
            pipe,
            prompts=prompts,
            negative_prompt=negative_prompt,
            embeds=embeds,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            flux_guidance=flux_guidance,
            model_id=model_id or f"diffusers:{path}",
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path} has neither model_index.json (a pipeline) nor config.json (a model): give a "
            f"folder written by save_pretrained"
        )
    cls_name = json.loads(config_file.read_text()).get("_class_name")
    if cls_name not in VP_CLASSES + FLOW_CLASSES:
        raise ValueError(f"{path} holds a {cls_name}; supported models: {', '.join(VP_CLASSES + FLOW_CLASSES)}")
    net = getattr(diffusers, cls_name).from_pretrained(path, **kwargs)
    scheduler = None
    for candidate in (path / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            scheduler = json.loads(candidate.read_text())
            break
    if scheduler is None:
        raise FileNotFoundError(
            f"{path} has no scheduler_config.json (beside the model or in ../scheduler/): the "
            f"adapter needs the scheduler config the model was trained with"
        )
    if prompts:
        raise ValueError("prompts need a pipeline folder (its text encoders); give embeddings for a model folder")
    latent = None
    if height is not None:  # a model folder has no VAE: the usual 8× latent scale (Flux packs 2 × 2 patches)
        width = width or height
        latent = (
            (2 * (height // 16), 2 * (width // 16))
            if cls_name == "FluxTransformer2DModel"
            else (height // 8, width // 8)
        )
    inner = adapt(net, scheduler, latent_size=latent, model_id=model_id or f"diffusers:{path}")
    cond, negative = _from_embeds(embeds, inner, guidance_scale)
    if class_name(net) == "FluxTransformer2DModel":
        cond = {**_flux_ids(inner, cond), **cond}
        if net.config.guidance_embeds:
            cond.setdefault("guidance", torch.full((1,), float(flux_guidance)))
    return DiffusersCFGDenoiser(inner, guidance_scale, cond, negative)


def _flux_ids(inner: Any, cond: dict) -> dict:
    from .diffusers_configs import flux_image_ids

    h, w = inner.latent_size
    tokens = cond["encoder_hidden_states"].shape[1] if "encoder_hidden_states" in cond else 0
    return {"img_ids": flux_image_ids(h, w), "txt_ids": torch.zeros(tokens, 3)}


def _from_embeds(embeds: Any, inner: Any, guidance_scale: float) -> tuple[dict, dict]:
    if embeds is None:
        raise ValueError("give prompts (with a pipeline folder) or embeddings (embeds=FILE.safetensors)")
    if not isinstance(embeds, dict):
        from safetensors.torch import load_file

        embeds = load_file(str(embeds))
    unknown = sorted(set(embeds) - set(EMBED_KEYS))
    if unknown:
        raise ValueError(f"unknown embeddings {unknown}; an embeddings file holds {', '.join(EMBED_KEYS)}")
    pooled_key = "text_embeds" if inner.kind == "UNet2DConditionModel" else "pooled_projections"
    cond, negative = {}, {}
    for name, value in embeds.items():
        key = EMBED_KEYS[name].replace("pooled", pooled_key)
        (negative if key.startswith("negative_") else cond)[key] = value
    if guidance_scale != 1.0 and not negative:
        raise ValueError("guidance_scale above 1 needs negative_* embeddings for the unconditional branch")
    return cond, negative


def model_from_pipeline(
    pipe: Any,
    *,
    prompts: list[str] | None = None,
    negative_prompt: str | None = None,
    embeds: Any = None,
    guidance_scale: float = 1.0,
    height: int | None = None,
    width: int | None = None,
    flux_guidance: float = 3.5,
    model_id: str = "",
) -> DiffusersCFGDenoiser:
    """A pipeline's network and scheduler config as a tunable denoiser, conditioned on ``prompts`` (encoded by the
    pipeline's ``encode_prompt``; one row per prompt, cycled over a batch) or ``embeds``, with CFG at
    ``guidance_scale``."""
    attr, net = network_of(pipe)
    kind = class_name(net)
    scale = getattr(pipe, "vae_scale_factor", 8) or 8
    default = (net.config.get("sample_size") or 64) * scale if kind != "FluxTransformer2DModel" else 1024
    height = height or default
    width = width or height
    if kind == "FluxTransformer2DModel":
        latent = (2 * (height // (scale * 2)), 2 * (width // (scale * 2)))
    else:
        latent = (height // scale, width // scale)
    inner = adapt(net, pipe.scheduler.config, latent_size=latent, model_id=model_id or type(pipe).__name__)
    if prompts:
        cond, negative = _encode(pipe, kind, prompts, negative_prompt, guidance_scale, height, width)
    else:
        cond, negative = _from_embeds(embeds, inner, guidance_scale)
    if kind == "FluxTransformer2DModel":
        cond = {**_flux_ids(inner, cond), **cond}
        if net.config.guidance_embeds:
            cond.setdefault("guidance", torch.full((1,), float(flux_guidance)))
    elif kind == "UNet2DConditionModel" and net.config.get("addition_embed_type") == "text_time":
        cond.setdefault("time_ids", torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32))
    return DiffusersCFGDenoiser(inner, guidance_scale, cond, negative)


def _encode(
    pipe: Any,
    kind: str,
    prompts: list[str],
    negative_prompt: str | None,
    guidance_scale: float,
    height: int,
    width: int,
) -> tuple[dict, dict]:
    """Prompts through the pipeline's own ``encode_prompt`` (SD, SDXL, SD3 and Flux pipelines' signatures)."""
    device = next(network_of(pipe)[1].parameters()).device
    cfg = guidance_scale != 1.0
    negative_prompt = negative_prompt or ""
    with torch.no_grad():
        if kind == "FluxTransformer2DModel":
            pe, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device)
            cond = {"encoder_hidden_states": pe, "pooled_projections": pooled}
            negative = {}
            if cfg:
                npe, npooled, _ = pipe.encode_prompt(prompt=[negative_prompt], prompt_2=None, device=device)
                negative = {"encoder_hidden_states": npe, "pooled_projections": npooled}
            return cond, negative
        if kind == "SD3Transformer2DModel":
            pe, npe, pooled, npooled = pipe.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=device,
                do_classifier_free_guidance=cfg,
                negative_prompt=[negative_prompt] * len(prompts),
            )
            return (
                {"encoder_hidden_states": pe, "pooled_projections": pooled},
                {"encoder_hidden_states": npe[:1], "pooled_projections": npooled[:1]} if cfg else {},
            )
        if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
            pe, npe, pooled, npooled = pipe.encode_prompt(
                prompt=prompts,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=cfg,
                negative_prompt=[negative_prompt] * len(prompts),
            )
            return (
                {"encoder_hidden_states": pe, "text_embeds": pooled},
                {"encoder_hidden_states": npe[:1], "text_embeds": npooled[:1]} if cfg else {},
            )
        pe, npe = pipe.encode_prompt(prompts, device, 1, cfg, negative_prompt=[negative_prompt] * len(prompts))
        return {"encoder_hidden_states": pe}, ({"encoder_hidden_states": npe[:1]} if cfg else {})


def load_spec(spec: str) -> DiffusersCFGDenoiser:
    """``diffusers:PATH[?key=value&...]`` (the command line's ``--model``) as :func:`load` takes it: keys
    ``prompts`` (a text file, one prompt a line), ``prompt`` (one prompt), ``negative``, ``embeds`` (a safetensors
    file), ``guidance`` (CFG scale), ``size`` (pixels, N or HxW), ``dtype``, ``flux_guidance``. The spec itself
    is the model's id, so ``timetuner eval --tuned`` loads the same."""
    if not spec.startswith("diffusers:"):
        raise ValueError(f"{spec!r} is not diffusers:PATH")
    body = spec.removeprefix("diffusers:")
    path, _, query = body.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    known = {"prompts", "prompt", "negative", "embeds", "guidance", "size", "dtype", "flux_guidance"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in {spec!r}; options: {', '.join(sorted(known))}")
    prompts = None
    if "prompts" in options:
        prompts = [line.strip() for line in Path(options["prompts"]).read_text().splitlines() if line.strip()]
    elif "prompt" in options:
        prompts = [options["prompt"]]
    height = width = None
    if options.get("size"):
        h, _, w = options["size"].lower().partition("x")
        height, width = int(h), int(w or h)
    return load(
        path,
        prompts=prompts,
        negative_prompt=options.get("negative"),
        embeds=options.get("embeds"),
        guidance_scale=float(options.get("guidance", 1.0)),
        height=height,
        width=width,
        dtype=options.get("dtype"),
        flux_guidance=float(options.get("flux_guidance", 3.5)),
        model_id=spec,
    )
