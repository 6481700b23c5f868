"""Tunable denoisers: ``D(x, sigma, cond_sigma=None, **extra)`` in k-diffusion's σ (VE) space.

Every adapter computes D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(τ)): the
preconditioning stays at the σ the sampler evaluates at, and only the network's
noise conditioning moves to ``cond_sigma`` = τ (defaults to σ).
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..contract import OPTIONAL_MEMBERS


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so ``v`` broadcasts against an ``ndim`` tensor."""
    return v[(...,) + (None,) * (ndim - v.ndim)]


_RECOMPUTE: ContextVar[bool] = ContextVar("timetuner_recompute", default=False)


@contextmanager
def recompute_evaluations(enabled: bool = True) -> Iterator[None]:
    """While active, each tunable denoiser call that records gradients stores only its inputs, and its
    activations are recomputed in the backward pass (activation checkpointing per network evaluation): a
    run's peak memory is one evaluation's, not K of them, for about one more forward per evaluation."""
    token = _RECOMPUTE.set(enabled)
    try:
        yield
    finally:
        _RECOMPUTE.reset(token)


def _device_table(log_sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The log σ table on ``like``'s device, in float64 where the device has it."""
    return log_sigmas.to(like.device, torch.float32 if like.device.type == "mps" else torch.float64)


def fractional_timestep(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A discrete model's time for σ: the step index in its ascending log σ table, linear in log σ between
    steps and extrapolated linearly past either end (in the table's float64; differentiable in σ)."""
    table = _device_table(log_sigmas, sigma)
    log_sigma = sigma.to(table.dtype).log()
    high = torch.searchsorted(table, log_sigma.detach().reshape(-1).contiguous()).reshape(log_sigma.shape)
    high = high.clamp(1, len(table) - 1)
    low = high - 1
    return low + (log_sigma - table[low]) / (table[high] - table[low])


@dataclass(frozen=True)
class SigmaTable:
    """A model's discrete σ table (ascending, float32) and its time mapping, as ComfyUI's ``model_sampling``
    holds them: the named schedules read these, so their σ's match a ComfyUI run's."""

    sigmas: torch.Tensor
    timestep: Callable[[torch.Tensor], torch.Tensor]
    sigma: Callable[[torch.Tensor], torch.Tensor]

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]


def log_linear_table(log_sigmas: torch.Tensor) -> SigmaTable:
    """A discrete-time table: timestep(σ) is the nearest step, sigma(t) interpolates log σ between steps."""
    log_sigmas = log_sigmas.float()

    def timestep(sigma: torch.Tensor) -> torch.Tensor:
        return (sigma.float().log().reshape(-1, 1) - log_sigmas).abs().argmin(dim=1).reshape(sigma.shape)

    def sigma(t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).float().clamp(0, len(log_sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()

    return SigmaTable(log_sigmas.exp(), timestep, sigma)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def set_network_dtype(model: Any, dtype: str | torch.dtype) -> Any:
    """Run the model's network in ``dtype`` (its parameters cast; buffers such as σ tables stay as they are):
    the sampler's state, τ and the loss stay float32, each evaluation's input is cast to the network's dtype
    and its output back (as ComfyUI runs fp16/bf16 checkpoints). The fingerprint stays that of the weights as
    loaded, so a set tuned in half precision applies to the same model in float32 and back."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    getattr(model, "fingerprint", None)  # computed (and kept) from the weights as loaded: sets stay appliable
    for module in model.modules() if isinstance(model, nn.Module) else ():
        for param in module.parameters(recurse=False):
            param.data = param.data.to(dtype)
    return model


def network_parameters(model: Any) -> int:
    """How many parameters the model's network has: its ``network_parameters`` when it says (wrappers of
    foreign models), else its own module parameters."""
    count = getattr(model, "network_parameters", None)
    if count is not None:
        return int(count)
    return sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else 0


@contextmanager
def frozen_network(model: Any) -> Iterator[None]:
    """The model's weights without gradients inside (as they were after): τ is trained, never the network, so the
    backward pass computes nothing for the weights and leaves no ``.grad`` on a network its owner left trainable."""
    trainable = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def fingerprint_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: the model's identity."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class TunableDenoiser(nn.Module):
    """Base class: subclasses implement ``denoise(x, sigma, cond_sigma, **extra)``.

    Attributes a sampler, schedule or tuner may read: ``sigma_min``/``sigma_max``
    (the σ range the model was trained on), ``sample_shape`` (one sample, no
    batch), ``default_schedule``, ``model_id`` and ``fingerprint``.
    """

    is_tunable_denoiser = True
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sample_shape: tuple[int, ...] = ()
    default_schedule: str = "karras"
    model_id: str = ""
    time_offset: float = 0.0  # the model's continuous time is t + time_offset (1 for DDPM's steps 0..N-1)
    space: str = "ve"  # the sampler's state: "ve", x = x₀ + σ·ε (k-diffusion's σ); "flow", x = (1 − σ)·x₀ + σ·ε
    tau_max: float | None = None  # the largest noise level the network was trained on, where τ must stop

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor | None = None, **extra: Any
    ) -> torch.Tensor:
        """Denoised x in x's dtype (the network may run in another, e.g. a half-precision model). Inside
        :func:`recompute_evaluations`, a call that records gradients keeps only its inputs and recomputes its
        activations in the backward pass."""
        cond = sigma if cond_sigma is None else cond_sigma
        if _RECOMPUTE.get() and torch.is_grad_enabled():
            return checkpoint(self._evaluate_once, x, sigma, cond, extra, use_reentrant=False)
        return self.denoise(x, sigma, cond, **extra).to(x.dtype)

    def _evaluate_once(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, extra: dict) -> torch.Tensor:
        token = _RECOMPUTE.set(False)  # inner denoisers (CFG's) run inside this one checkpoint
        try:
            return self.denoise(x, sigma, cond, **extra).to(x.dtype)
        finally:
            _RECOMPUTE.reset(token)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        raise NotImplementedError

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's own time for σ (σ itself unless the model has a discrete time axis)."""
        return sigma

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def sigma_table(self) -> SigmaTable:
        """The σ table the named schedules read (1000 steps log-uniform over the σ range, unless the model
        has a table of its own), with the model's time as the timestep."""
        log = torch.linspace(torch.tensor(self.sigma_min).log(), torch.tensor(self.sigma_max).log(), 1000)
        return SigmaTable(log.exp(), self.sigma_to_t, self.t_to_sigma)

    @property
    def t_range(self) -> tuple[float, float]:
        """(t at sigma_min, t at sigma_max)."""
        return (
            float(self.sigma_to_t(torch.tensor(self.sigma_min, dtype=torch.float64))),
            float(self.sigma_to_t(torch.tensor(self.sigma_max, dtype=torch.float64))),
        )

    @property
    def fingerprint(self) -> str:
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = fingerprint_tensors(dict(self.state_dict()))
            self._fingerprint = cached
        return cached


SPACES = {"ve": "a VE/VP model (x = x₀ + σ·ε in k-diffusion's σ)", "flow": "a flow model (x = (1 − σ)·x₀ + σ·ε)"}


def parameterisation(model: Any) -> dict[str, Any]:
    """What a tuned set records of the model's σ space: ``space``, a flow model's ``shift`` and ``multiplier``, and
    what the model's ``parameterisation_extra()`` adds (a diffusers adapter: its scheduler config)."""
    space = getattr(model, "space", "ve")
    out: dict[str, Any] = {"space": space}
    if space == "flow":
        out.update(shift=float(getattr(model, "shift", 1.0)), multiplier=float(getattr(model, "multiplier", 1000.0)))
    more = getattr(model, "parameterisation_extra", None)  # e.g. a diffusers adapter's scheduler config
    if callable(more):
        out.update(more())
    return out


class DiscreteVPDenoiser(TunableDenoiser):
    """A discrete-time VP model (DDPM): ε- or v-prediction with fractional timesteps.

    ``net(x_in, t, **extra)`` gets ``t`` in [0, N-1], possibly fractional: τ may fall
    between training steps. t(σ) interpolates linearly in log σ between steps.
    """

    default_schedule = "quadratic_t"
    time_offset = 1.0

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        super().__init__()
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.net = net
        self.prediction = prediction
        sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])

    @staticmethod
    def linear_betas(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
        """DDPM's linear β schedule (Ho et al. 2020), as ᾱ."""
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        return torch.cumprod(1 - betas, dim=0)

    @staticmethod
    def cosine_betas(steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
        """The cosine schedule (Nichol & Dhariwal 2021): ᾱ(t) ∝ cos²((t/T + s)/(1 + s)·π/2), β capped at 0.999."""
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return torch.cumprod(1 - betas, dim=0)

    def _table(self, like: torch.Tensor) -> torch.Tensor:
        return _device_table(self.log_sigmas, like)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return fractional_timestep(self.log_sigmas, sigma).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        table = self._table(t)
        t_hi = t.to(table.dtype)
        low = t_hi.detach().floor().long().clamp(0, len(table) - 2)
        w = t_hi - low
        out = (table[low] * (1 - w) + table[low + 1] * w).exp()
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def sigma_table(self) -> SigmaTable:
        """ComfyUI's ModelSamplingDiscrete: the training steps' σ's, nearest-step timesteps."""
        return log_linear_table(self.log_sigmas)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        s = append_dims(sigma, x.ndim)
        c_in = 1 / (s**2 + 1) ** 0.5
        out = self.net(x * c_in, self.sigma_to_t(cond_sigma), **extra)
        if self.prediction == "eps":
            return x - s * out
        return x / (s**2 + 1) - s * c_in * out


class EDMDenoiser(TunableDenoiser):
    """EDM preconditioning (Karras et al. 2022, Table 1): c_noise = ln(τ)/4."""

    default_schedule = "karras"

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.net = net
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max

    def sigma_table(self) -> SigmaTable:
        """ComfyUI's ModelSamplingContinuousEDM: 1000 log-uniform σ's, timestep ln(σ)/4."""
        log = torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), 1000)
        return SigmaTable(log.exp(), lambda sigma: sigma.log() / 4, lambda t: (torch.as_tensor(t) * 4).exp())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        s = append_dims(sigma, x.ndim)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2) ** 0.5
        c_in = 1 / (s**2 + sd2) ** 0.5
        return c_skip * x + c_out * self.net(x * c_in, cond_sigma.log() / 4, **extra)


def flow_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """SD3's time shift σ = s·t / (1 + (s − 1)·t) (Esser et al. 2024); s = 1 leaves t as it is."""
    return t if shift == 1.0 else shift * t / (1 + (shift - 1) * t)


class FlowDenoiser(TunableDenoiser):
    """A rectified-flow ("flow matching") model such as SD3, Flux or Wan: x_σ = (1 − σ)·x₀ + σ·ε, σ ∈ (0, 1].

    The network F(x, t) sees x unscaled and t = τ·``multiplier``, and predicts the velocity v = ε − x₀
    (``prediction="v"``: D = x − σ·v) or x₀ itself (``"x0"``); samplers run on D in the flow's own σ,
    as ComfyUI's CONST models do. ``shift`` s maps the model's time t to σ = s·t / (1 + (s − 1)·t):
    it sets the σ table the schedules read (``timesteps`` entries, σ(i / timesteps)), not what the
    network is conditioned on. τ above 1, outside the range the network was trained on, is clamped.
    """

    space = "flow"
    default_schedule = "simple"
    sigma_max = 1.0
    tau_max = 1.0

    def __init__(
        self,
        net: nn.Module,
        prediction: str = "v",
        shift: float = 1.0,
        multiplier: float = 1000.0,
        timesteps: int = 1000,
    ):
        super().__init__()
        if prediction not in ("v", "x0"):
            raise ValueError(f"prediction must be 'v' (velocity ε − x₀) or 'x0', got {prediction!r}")
        if not shift > 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.net, self.prediction = net, prediction
        self.shift, self.multiplier, self.timesteps = float(shift), float(multiplier), int(timesteps)
        self.sigma_min = float(flow_shift(self.shift, torch.tensor(1 / self.timesteps, dtype=torch.float64)))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's unshifted time t for σ (the inverse of :func:`flow_shift`)."""
        s = self.shift
        return sigma if s == 1.0 else sigma / (s - (s - 1) * sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return flow_shift(self.shift, t)

    def sigma_table(self) -> SigmaTable:
        """ComfyUI's ModelSamplingDiscreteFlow: σ(i / timesteps) for i = 1…timesteps, timestep σ·multiplier."""
        t = torch.arange(1, self.timesteps + 1) / self.timesteps * self.multiplier
        return SigmaTable(
            flow_shift(self.shift, t / self.multiplier),
            lambda sigma: sigma * self.multiplier,
            lambda t: flow_shift(self.shift, torch.as_tensor(t) / self.multiplier),
        )

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond_sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = self.net(x, cond_sigma.clamp(max=self.tau_max) * self.multiplier, **extra)
        if self.prediction == "x0":
            return out
        return x - append_dims(sigma, x.ndim) * out


WRAPPED_ATTRIBUTES = (  # what a wrapper (CFG) takes over from the denoiser it wraps
    "sigma_min",
    "sigma_max",
    "sample_shape",
    "default_schedule",
    "model_id",
    "space",
    "tau_max",
    "time_offset",
)


class CFGDenoiser(TunableDenoiser):
    """Classifier-free guidance over a tunable denoiser; both branches see τ.

    Extra arguments ``cond`` and ``uncond`` are passed to the inner model as
    ``cond_key`` (one batched call); D = D_u + scale·(D_c − D_u).
    """

    def __init__(self, inner: TunableDenoiser, scale: float, cond_key: str = "label"):
        super().__init__()
        self.inner, self.scale, self.cond_key = inner, scale, cond_key
        for attr in WRAPPED_ATTRIBUTES:
            setattr(self, attr, getattr(inner, attr))
        for attr in OPTIONAL_MEMBERS:  # the inner model's own metric, features and data serve the guided one
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.inner.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.inner.t_to_sigma(t)

    def sigma_table(self) -> SigmaTable:
        return self.inner.sigma_table()

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        cond_sigma: torch.Tensor,
        cond: Any = None,
        uncond: Any = None,
        **extra: Any,
    ) -> torch.Tensor:
        if cond is None or uncond is None:
            raise ValueError("CFGDenoiser needs extra_args 'cond' and 'uncond' (the two branches' conditioning)")
        b = x.shape[0]
        both = lambda v: torch.cat([v, v]) if v.ndim else v  # noqa: E731
        out = self.inner(
            torch.cat([x, x]),
            both(sigma),
            cond_sigma=both(cond_sigma),
            **{self.cond_key: torch.cat([uncond, cond])},
            **extra,
        )
        d_uncond, d_cond = out[:b], out[b:]
        return d_uncond + (d_cond - d_uncond) * self.scale
