"""diffusers' model classes as tunable denoisers (the optional ``diffusers`` extra; diffusers is imported lazily).

- ε- and v-prediction discrete-time networks (:class:`diffusers.UNet2DModel`,
  :class:`diffusers.UNet2DConditionModel`, SDXL's added conditions included) become a
  :class:`DiffusersVPDenoiser`: :class:`~timetuner_plugins.adapters.denoisers.DiscreteVPDenoiser`'s σ ↔ t mapping on the
  ᾱ table of the model's scheduler config (computed by diffusers' own DDPMScheduler, so every
  ``beta_schedule`` — ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` —, ``trained_betas`` and
  ``rescale_betas_zero_snr`` give the ᾱ the pipelines use).
- Flow-matching transformers (:class:`diffusers.SD3Transformer2DModel`, :class:`diffusers.FluxTransformer2DModel`)
  become a :class:`DiffusersFlowDenoiser`: :class:`~timetuner_plugins.adapters.denoisers.FlowDenoiser`'s semantics (x =
  (1 − σ)·x₀ + σ·ε, D = x − σ·v, τ clamped to 1). SD3's ``timestep`` is τ·1000; Flux's transformer takes τ itself
  and multiplies by 1000 inside (FluxPipeline passes ``timestep / 1000``). The shift is the scheduler config's
  ``shift``, or for a dynamic-shift config (Flux) e^μ with μ from the image's token count as FluxPipeline
  computes it — recorded in the SD3 form s·t / (1 + (s − 1)·t), which is the same σ's.

Only the network's timestep input moves to τ; the preconditioning stays at σ. Conditioning passes as the
sampler's ``extra_args`` under the network's own keyword names (``encoder_hidden_states``,
``pooled_projections``, ``class_labels``, SDXL's ``text_embeds`` and ``time_ids`` — flat, or as
``added_cond_kwargs`` —, Flux's ``img_ids``, ``txt_ids`` and ``guidance``); conditioning with batch 1 is
expanded to the batch. The network runs in its own dtype: the input and the text embeddings are cast to the
network's dtype, the output back to x's dtype, so a bf16 or fp16 network runs under a float32 sampler state.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from torch import nn

from ..contract import OPTIONAL_MEMBERS
from .denoisers import WRAPPED_ATTRIBUTES, DiscreteVPDenoiser, FlowDenoiser, SigmaTable, TunableDenoiser

INSTALL_HINT = "pip install 'timetuner[diffusers]'"
VP_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
FLOW_CLASSES = ("SD3Transformer2DModel", "FluxTransformer2DModel")
# keyword arguments whose first dimension is the batch (batch-1 tensors are expanded to the batch)
BATCHED = (
    "encoder_hidden_states",
    "pooled_projections",
    "text_embeds",
    "time_ids",
    "class_labels",
    "guidance",
    "encoder_attention_mask",
    "timestep_cond",
)
EMBEDDINGS = ("encoder_hidden_states", "pooled_projections", "text_embeds", "timestep_cond")  # cast to the net's dtype
BETA_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
)
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}


class DiffusersUnavailable(ImportError):
    """diffusers is not installed (or fails to import); the message says how to install it."""


def require_diffusers():
    """The diffusers module, or :class:`DiffusersUnavailable` naming the install command."""
    try:
        import diffusers
    except ModuleNotFoundError as exc:
        raise DiffusersUnavailable(f"diffusers is not installed ({exc.name!r} is missing); {INSTALL_HINT}") from None
    return diffusers


def class_name(obj: Any) -> str | None:
    """The diffusers model class ``obj`` is an instance of (by its MRO, so subclasses count), without importing
    diffusers; None if it is none of the supported ones."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("diffusers.") and cls.__name__ in VP_CLASSES + FLOW_CLASSES:
            return cls.__name__
    return None


def alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """ᾱ of a discrete-time scheduler config (float64), computed by diffusers' DDPMScheduler from the config's
    β entries, so it is exactly the table the pipelines' schedulers hold (float32 there)."""
    diffusers = require_diffusers()
    betas = {k: scheduler_config[k] for k in BETA_KEYS if scheduler_config.get(k) is not None}
    return diffusers.DDPMScheduler(**betas).alphas_cumprod.double()


def flow_shift_for(scheduler_config: dict[str, Any], image_seq_len: int | None) -> float:
    """The SD3-form shift s of a FlowMatchEulerDiscreteScheduler config: its ``shift``, or with
    ``use_dynamic_shifting`` e^μ (``time_shift_type`` "exponential") or μ ("linear"), μ interpolated linearly in
    the image's token count between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)."""
    cfg = scheduler_config
    if not cfg.get("use_dynamic_shifting"):
        return float(cfg.get("shift", 1.0))
    if image_seq_len is None:
        raise ValueError("a dynamic-shift scheduler config (use_dynamic_shifting) needs the image's token count")
    base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base, top = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    mu = base + (top - base) * (image_seq_len - base_len) / (max_len - base_len)
    return math.exp(mu) if cfg.get("time_shift_type", "exponential") == "exponential" else float(mu)


def sampled_fingerprint(module: nn.Module, extra: dict[str, Any], samples: int = 64) -> str:
    """sha256 over the module's class and config, ``extra`` (the scheduler settings the adapter uses) and, for
    every tensor of the state dict in name order, its name, dtype, shape and ``samples`` elements at evenly spaced
    flat positions (first and last included).

    Why a sample: hashing every byte (the project's default fingerprint) reads the whole network — 3.4 GB for
    SD1.5 in float32, 24 GB for Flux in bf16 —, seconds to minutes per run. Any change to the config or to a
    tensor's shape changes this one; a fine-tune or merge changes nearly every weight, so its sampled elements
    change too. A change confined to elements between the sampled positions would go unnoticed. The dtype is
    part of it: a set tuned with bf16 weights is refused for the float32 weights it was cast from (the check's
    ``force`` applies it anyway)."""
    digest = hashlib.sha256()
    cfg = dict(getattr(module, "config", {}) or {})
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    digest.update(
        json.dumps({"class": type(module).__name__, "config": cfg, **extra}, sort_keys=True, default=str).encode()
    )
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        n = flat.numel()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if n:
            picked = flat[sample_positions(n, samples).to(flat.device)].cpu().contiguous()
            digest.update(
                picked.view(torch.uint8).numpy().tobytes() if picked.dtype != torch.bool else picked.numpy().tobytes()
            )
    return digest.hexdigest()


def sample_positions(n: int, samples: int) -> torch.Tensor:
    """``min(n, samples)`` evenly spaced positions in 0 … n − 1, first and last included (integer arithmetic: a float
    grid rounds past the end of tensors over 2^24 elements)."""
    k = min(n, samples)
    if k == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.arange(k, dtype=torch.long) * (n - 1) // (k - 1)


def _net_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


def prepare_kwargs(
    extra: dict[str, Any], batch: int, dtype: torch.dtype, kind: str, device: torch.device | None = None
) -> dict[str, Any]:
    """The network's keyword arguments from a sampler's extra arguments: tensors moved to ``device``, batch-1
    conditioning expanded to ``batch``, text embeddings cast to ``dtype``; SDXL's flat ``text_embeds`` /
    ``time_ids`` gathered into ``added_cond_kwargs``."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if torch.is_tensor(value):
            if device is not None:
                value = value.to(device)
            if key in BATCHED and value.ndim and value.shape[0] == 1 and batch > 1:
                value = value.expand(batch, *value.shape[1:])
            if key in EMBEDDINGS and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    if kind == "UNet2DConditionModel":
        added = dict(out.pop("added_cond_kwargs", None) or {})
        for key in ("text_embeds", "time_ids"):
            if key in out:
                added[key] = out.pop(key)
        for key, value in list(added.items()):
            if torch.is_tensor(value) and device is not None:
                value = value.to(device)
            if torch.is_tensor(value) and value.ndim and value.shape[0] == 1 and batch > 1:
                value = value.expand(batch, *value.shape[1:])
            if key == "text_embeds" and torch.is_tensor(value):
                value = value.to(dtype)
            added[key] = value
        if added:
            out["added_cond_kwargs"] = added
    return out


class DiffusersNet(nn.Module):
    """``net(x, t, **extra)`` over a diffusers model: ``t`` is the model's ``timestep`` argument; the model runs in
    its own dtype and the output comes back in x's dtype."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor, t: torch.Tensor, **extra: Any) -> torch.Tensor:
        dtype = _net_dtype(self.model)
        kwargs = prepare_kwargs(extra, x.shape[0], dtype, self.kind, x.device)
        if self.kind in FLOW_CLASSES:
            out = self.model(hidden_states=x.to(dtype), timestep=t, return_dict=False, **kwargs)[0]
        else:
            out = self.model(x.to(dtype), timestep=t, return_dict=False, **kwargs)[0]
        return out.to(x.dtype)


class _DiffusersMixin:
    """What both adapters share: the model's identity and its scheduler config."""

    scheduler_config: dict[str, Any]
    kind: str
    net: DiffusersNet

    @property
    def model(self) -> nn.Module:
        """The wrapped diffusers model."""
        return self.net.model

    @property
    def fingerprint(self) -> str:
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = self._fingerprint = sampled_fingerprint(self.net.model, self.fingerprint_extra())
        return cached

    def fingerprint_extra(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_timesteps_kwargs(self, steps: int) -> dict[str, Any]:
        """Keyword arguments beyond the step count with which this model's pipeline calls its scheduler's
        ``set_timesteps`` (none, except for Flux)."""
        return {}

    def parameterisation_extra(self) -> dict[str, Any]:
        """Recorded in a tuned set (``extra["model"]``): the scheduler config the diffusers samplers started from,
        so that applying the set to a pipeline can compare its scheduler's settings."""
        return {
            "diffusers_scheduler": json.loads(
                json.dumps({k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}, default=str)
            )
        }


class DiffusersVPDenoiser(_DiffusersMixin, DiscreteVPDenoiser):
    """A :class:`diffusers.UNet2DModel` or :class:`diffusers.UNet2DConditionModel` with its scheduler config, as a
    tunable denoiser (ε- or v-prediction by the config's ``prediction_type``)."""

    def __init__(
        self,
        model: nn.Module,
        scheduler_config: dict[str, Any],
        sample_shape: tuple[int, ...] | None = None,
        model_id: str = "",
        prediction: str | None = None,
    ):
        kind = class_name(model)
        if kind not in VP_CLASSES:
            raise TypeError(f"DiffusersVPDenoiser takes a {' or '.join(VP_CLASSES)}, got {type(model).__name__}")
        scheduler_config = dict(scheduler_config)
        if prediction is None:
            ptype = scheduler_config.get("prediction_type", "epsilon")
            if ptype not in PREDICTIONS:
                raise ValueError(
                    f"scheduler prediction_type {ptype!r} is not supported: the adapter takes "
                    f"{', '.join(PREDICTIONS)} (ε- or v-prediction)"
                )
            prediction = PREDICTIONS[ptype]
        model.requires_grad_(False)  # τ is trained, never the network: no gradients into its weights
        super().__init__(DiffusersNet(model, kind), alphas_cumprod(scheduler_config), prediction)
        self.kind, self.scheduler_config = kind, scheduler_config
        cfg = model.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
        h, w = (size, size) if isinstance(size, int) else size
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else (cfg.in_channels, h, w)
        self.model_id = model_id or f"diffusers-{kind}"

    def fingerprint_extra(self) -> dict[str, Any]:
        return {
            "adapter": "vp",
            "prediction": self.prediction,
            "betas": {k: self.scheduler_config.get(k) for k in BETA_KEYS},
        }


class DiffusersFlowDenoiser(_DiffusersMixin, FlowDenoiser):
    """A :class:`diffusers.SD3Transformer2DModel` or :class:`diffusers.FluxTransformer2DModel` with its
    FlowMatchEulerDiscreteScheduler config, as a tunable flow denoiser.

    ``latent_size`` (height, width) is the latent's size in latent pixels (before Flux's packing); it sets the
    sample shape — (C, H, W) for SD3, (H/2 · W/2, 4C) packed tokens for Flux — and Flux's dynamic shift. Flux's
    conditioning must bring ``img_ids`` for that size (``diffusers_configs.flux_image_ids``) and ``txt_ids``.
    """

    def __init__(
        self,
        model: nn.Module,
        scheduler_config: dict[str, Any],
        latent_size: tuple[int, int] | None = None,
        model_id: str = "",
    ):
        kind = class_name(model)
        if kind not in FLOW_CLASSES:
            raise TypeError(f"DiffusersFlowDenoiser takes a {' or '.join(FLOW_CLASSES)}, got {type(model).__name__}")
        scheduler_config = dict(scheduler_config)
        cfg = model.config
        if latent_size is None:
            size = cfg.get("sample_size", 128) or 128
            latent_size = (size, size)
        h, w = latent_size
        if kind == "FluxTransformer2DModel":
            if h % 2 or w % 2:
                raise ValueError(f"Flux packs 2 × 2 latent patches: latent_size must be even, got {latent_size}")
            seq_len = (h // 2) * (w // 2)
            sample_shape: tuple[int, ...] = (seq_len, cfg.in_channels)
            multiplier = 1.0  # the transformer multiplies its timestep by 1000 itself
        else:
            seq_len = (h // cfg.patch_size) * (w // cfg.patch_size)
            sample_shape, multiplier = (cfg.in_channels, h, w), 1000.0
        shift = flow_shift_for(scheduler_config, seq_len)
        model.requires_grad_(False)
        super().__init__(
            DiffusersNet(model, kind),
            prediction="v",
            shift=shift,
            multiplier=multiplier,
            timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        )
        self.kind, self.scheduler_config, self.latent_size, self.image_seq_len = kind, scheduler_config, (h, w), seq_len
        self.sample_shape = sample_shape
        self.model_id = model_id or f"diffusers-{kind}"

    def fingerprint_extra(self) -> dict[str, Any]:
        return {"adapter": "flow", "multiplier": self.multiplier}  # the shift depends on the image size: not here

    def set_timesteps_kwargs(self, steps: int) -> dict[str, Any]:
        """FluxPipeline's call: σ's linspace(1, 1/steps, steps) before the shift, and μ (= log s) for a dynamic
        shift; SD3's pipeline gives the step count only."""
        if self.kind != "FluxTransformer2DModel":
            return {}
        kwargs: dict[str, Any] = {"sigmas": torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64).tolist()}
        if self.scheduler_config.get("use_dynamic_shifting"):
            linear = self.scheduler_config.get("time_shift_type", "exponential") != "exponential"
            kwargs["mu"] = self.shift if linear else math.log(self.shift)
        return kwargs


def adapt(
    model: nn.Module,
    scheduler_config: dict[str, Any] | Any = None,
    *,
    sample_shape: tuple[int, ...] | None = None,
    latent_size: tuple[int, int] | None = None,
    model_id: str = "",
) -> TunableDenoiser:
    """The tunable denoiser for a supported diffusers model and its scheduler config (a dict or a scheduler, whose
    ``config`` is read). Without a config: DDPM's linear ε schedule for a UNet, SD3's shift 3 for a flow model
    — pass the pipeline's ``scheduler.config`` for the real one."""
    kind = class_name(model)
    if kind is None:
        raise TypeError(
            f"no diffusers adapter for {type(model).__module__}.{type(model).__qualname__}; supported: "
            f"{', '.join(VP_CLASSES + FLOW_CLASSES)}"
        )
    if scheduler_config is not None and not isinstance(scheduler_config, dict):
        scheduler_config = dict(scheduler_config.config)
    if kind in VP_CLASSES:
        from .diffusers_configs import DDPM_SCHEDULER

        cfg = scheduler_config if scheduler_config is not None else DDPM_SCHEDULER
        if latent_size is not None and sample_shape is None:
            sample_shape = (model.config.in_channels, *latent_size)
        return DiffusersVPDenoiser(model, cfg, sample_shape=sample_shape, model_id=model_id)
    from .diffusers_configs import SD3_SCHEDULER

    cfg = scheduler_config if scheduler_config is not None else SD3_SCHEDULER
    if sample_shape is not None:
        raise TypeError("flow models take latent_size=(height, width), not sample_shape")
    return DiffusersFlowDenoiser(model, cfg, latent_size=latent_size, model_id=model_id)


class DiffusersCFGDenoiser(TunableDenoiser):
    """Classifier-free guidance over a diffusers adapter, both branches in one batched call, both at τ.

    A call's extra arguments are the conditional branch's keyword arguments; the same names with the prefix
    ``negative_`` are the unconditional branch's (``negative_encoder_hidden_states``, ``negative_pooled_projections``,
    ``negative_text_embeds``, ...), as diffusers names its ``negative_prompt_embeds``. Arguments without a
    negative counterpart are shared (SDXL's ``time_ids``, Flux's ids and ``guidance``). D = D_u + scale·(D_c − D_u);
    ``guidance_scale`` 1 makes the conditional call only.

    ``cond`` / ``negative`` (optional): conditioning bound to the denoiser, used when a call brings none — P rows
    each; sample j of a batch gets row j mod P (a prompt list cycles over the batch). The command line's
    ``diffusers:PATH`` models carry their prompts this way.
    """

    def __init__(
        self,
        inner: TunableDenoiser,
        guidance_scale: float,
        cond: dict[str, Any] | None = None,
        negative: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.inner, self.guidance_scale = inner, float(guidance_scale)
        self.cond = dict(cond or {})
        self.negative = {k if k.startswith("negative_") else f"negative_{k}": v for k, v in (negative or {}).items()}
        for attr in (
            *WRAPPED_ATTRIBUTES,
            "shift",
            "multiplier",
            "timesteps",
            "scheduler_config",
            "kind",
            *OPTIONAL_MEMBERS,
        ):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.inner.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.inner.t_to_sigma(t)

    def sigma_table(self) -> SigmaTable:
        return self.inner.sigma_table()

    def set_timesteps_kwargs(self, steps: int) -> dict[str, Any]:
        return self.inner.set_timesteps_kwargs(steps)

    def parameterisation_extra(self) -> dict[str, Any]:
        more = getattr(self.inner, "parameterisation_extra", None)
        return more() if callable(more) else {}

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def _bound(self, batch: int) -> dict[str, Any]:
        out = {}
        for key, value in {**self.cond, **self.negative}.items():
            base = key.removeprefix("negative_")
            if torch.is_tensor(value) and base in BATCHED and value.ndim and value.shape[0] not in (1, batch):
                value = value[torch.arange(batch) % value.shape[0]]
            out[key] = value
        return out

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        b = x.shape[0]
        extra = extra or self._bound(b)
        positive = {k: v for k, v in extra.items() if not k.startswith("negative_")}
        if self.guidance_scale == 1.0:
            return self.inner(x, sigma, cond_sigma=cond_sigma, **positive)
        both: dict[str, Any] = {}
        for key, value in positive.items():
            negative = extra.get(f"negative_{key}")
            if negative is not None:
                both[key] = torch.cat([_rows(negative, b), _rows(value, b)])
            elif torch.is_tensor(value) and key in BATCHED and value.ndim:
                both[key] = torch.cat([_rows(value, b)] * 2)
            else:
                both[key] = value
        twice = lambda v: torch.cat([v, v]) if v.ndim else v  # noqa: E731
        out = self.inner(torch.cat([x, x]), twice(sigma), cond_sigma=twice(cond_sigma), **both)
        d_uncond, d_cond = out[:b], out[b:]
        return d_uncond + (d_cond - d_uncond) * self.guidance_scale


def _rows(value: Any, batch: int) -> Any:
    if torch.is_tensor(value) and value.ndim and value.shape[0] == 1 and batch > 1:
        return value.expand(batch, *value.shape[1:])
    return value
