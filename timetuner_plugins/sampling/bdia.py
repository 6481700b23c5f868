"""BDIA: bi-directional integration approximation, an exactly invertible sampler.

G. Zhang, J. P. Lewis, W. B. Kleijn, *Exact Diffusion Inversion via Bi-directional Integration
Approximation*, ECCV 2024 (arXiv:2307.10829).

In our indices (σ_0 > σ_1 > … > σ_N = 0, state x_i at σ_i), every step after the first evaluates the
model once at x_i and uses it twice: a forward prediction P_i(x_i) of the state at σ_{i+1} and a backward
prediction Q_i(x_i) of the state at σ_{i−1}, i.e. the integral over the *previous* interval recomputed
from x_i. The update

    x_{i+1} = P_i(x_i) + c_i · (x_{i−1} − Q_i(x_i)),        c_i = γ · α(σ_{i−1}) / α(σ_{i+1}),

is the paper's z_{i−1} = γ(z_{i+1} − z_i) − γΔ(t_i→t_{i+1}|z_i) + Δ(t_i→t_{i−1}|z_i) + z_i written in
k-diffusion's σ (VE) space: the paper works on z = α(σ)·x, hence the ratio of scale factors α (1 for a
VE model). γ = 0 is the plain sampler; γ = 1 averages nothing away (the fully time-symmetric update).
The first step has no x_{−1} and is the plain sampler's. Because x_{i+1} is an explicit, affine
function of x_{i−1} with a non-zero coefficient, the update runs backward exactly:

    x_{i−1} = Q_i(x_i) + (x_{i+1} − P_i(x_i)) / c_i,

so the last two states (x_N, x_{N−1}) give back the initial noise x_0 with N − 1 evaluations
(:func:`bdia_invert`), up to floating-point rounding: the division by c_i amplifies rounding each
step when γ < 1, so the round trip is tight in float64 and looser in float32 (see docs/samplers.md).

Two variants, as in the paper:

- ``bdia_ddim``: P and Q are DDIM steps (Euler on the probability-flow ODE in σ: x + (σ' − σ)·ε̂).
  ``frame`` picks the scale α(σ) of the space the paper's update is written in: ``vp``
  (α = 1/√(1+σ²): z is the VP state of the paper's DDIM setting) or ``ve`` (α = 1: the update on the
  sampler's own state, x₀ + σ·ε for VP/EDM models, (1 − σ)·x₀ + σ·ε for flow models, whose σ is their
  time). ``auto`` (default) is ``ve`` on flow models (their own state is the paper's z for a flow) and
  ``vp`` otherwise.
- ``bdia_edm``: P is EDM's Heun step (Karras et al. 2022, Alg. 1; the step to σ = 0 is Euler), by default
  in EDM's own frame (``ve``, α = 1; ``frame`` as above). The paper does not fix, in anything we could consult
  here, how the backward integral is approximated for EDM; it must depend on x_i alone to keep the update
  invertible, and must not cost another evaluation to keep EDM's count. ``backward="euler"`` (default)
  takes the Euler/DDIM step with the derivative at x_i: first order, like the last step; the
  ``"extrapolate"`` option integrates the derivative linearly extrapolated from the two evaluations the
  forward Heun step already made: second order on fine schedules, but it extrapolates over the previous,
  longer interval and is unstable at 5–20 evaluations on our models (and its inversion loses ~1e-2 of
  σ_0 in float32), so it is not the default.

The update has a second, parasitic root: for a direction the ODE contracts by R per step it is about
−c_i/R, so BDIA amplifies that mode where γ exceeds the step's contraction, i.e. where σ_i/σ_{i+1} is large
while σ is above the data's spread in that direction. The correction also only cancels DDIM's error when
consecutive intervals are of similar length (γ·Δ_{i−1}² ≈ Δ_i²). Schedules with large step ratios (Karras
at 5 steps) therefore do worse with BDIA than without; the VP frame damps the root at σ ≫ 1
(α(σ_{i−1})/α(σ_{i+1}) ≈ σ_{i+1}/σ_{i−1}), which is why γ = 1 stays usable there and not in σ space.

Only D(x, σ) and the σ's are used (the probability-flow ODE is dx/dσ = (x − D)/σ in the VE and in the
flow σ alike), so any model runs; ``frame`` is the only place a model family enters.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import trange

from .option_checks import SamplerOptionError, check_choice, check_range, work_dtype
from .samplers import _report, is_flow, to_d

FRAMES = ("auto", "vp", "ve")
BACKWARDS = ("euler", "extrapolate")
DEFAULT_GAMMA = 0.5  # the authors' recommendation for ~10 steps (1.0 for ~40 and for inversion)


def frame_scale(sigma: torch.Tensor, frame: str) -> torch.Tensor:
    """α(σ): the scale of the space z = α·x the BDIA update is written in."""
    if frame == "vp":
        return (1 + sigma**2).rsqrt()
    return torch.ones_like(sigma)


def resolve_frame(model: Callable, frame: str) -> str:
    """``auto``: ``ve`` (the sampler's own state) on a flow model, ``vp`` otherwise."""
    if frame != "auto":
        return frame
    return "ve" if is_flow(model) else "vp"


class _Steps:
    """The forward and backward predictions of one BDIA variant at state x_i (the model calls they cost)."""

    def __init__(
        self,
        model: Callable,
        sigmas: torch.Tensor,
        variant: str,
        gamma: float,
        frame: str,
        backward: str,
        extra_args: dict | None,
        like: torch.Tensor,
    ):
        self.model, self.sigmas, self.variant, self.backward = model, sigmas, variant, backward
        self.extra_args = extra_args or {}
        self.ones = like.new_ones([like.shape[0]])
        self.host = sigmas.tolist()
        if frame == "ve":
            self.coef = [gamma] * len(sigmas)
        else:  # c_i = γ α(σ_{i−1}) / α(σ_{i+1}) for i ≥ 1, on the device, differentiable in the σ's
            alpha = frame_scale(sigmas.to(work_dtype(sigmas)), frame)
            ratio = torch.cat([alpha.new_zeros(1), gamma * alpha[:-2] / alpha[2:]])
            self.coef = list(ratio.to(like.dtype).unbind(0))

    def __call__(
        self, x: torch.Tensor, i: int, need_backward: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(P_i(x), Q_i(x) or None, denoised at x)."""
        sigmas, sigma = self.sigmas, self.sigmas[i]
        denoised = self.model(x, sigma * self.ones, **self.extra_args)
        d = to_d(x, sigma, denoised)
        dt = sigmas[i + 1] - sigma
        d_2 = None
        if self.variant == "ddim" or self.host[i + 1] == 0:
            forward = x + d * dt
        else:  # EDM's Heun step
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], self.model(x_2, sigmas[i + 1] * self.ones, **self.extra_args))
            forward = x + (d + d_2) / 2 * dt
        if i == 0 or not need_backward:
            return forward, None, denoised
        back = sigmas[i - 1] - sigma
        backward = x + d * back
        if d_2 is not None and self.backward == "extrapolate":
            backward = backward + (d_2 - d) / dt * (back**2 / 2)
        return forward, backward, denoised


def _options(sampler: str, gamma: Any, frame: str = "ve", backward: str = "euler") -> float:
    check_choice(sampler, "frame", frame, FRAMES)
    check_choice(sampler, "backward", backward, BACKWARDS)
    return check_range(sampler, "gamma", gamma, 0.0, 1.0, "0 is the plain sampler, 1 the fully bi-directional update")


def _run(
    model,
    x,
    sigmas,
    extra_args,
    callback,
    disable,
    variant: str,
    gamma: float,
    frame: str,
    backward: str,
    x_next: torch.Tensor | None = None,
) -> torch.Tensor:
    steps = _Steps(model, sigmas, variant, gamma, resolve_frame(model, frame), backward, extra_args, x)
    previous, first = None, 0
    if x_next is not None:  # start from a given pair (x_0, x_1): no first plain step
        previous, x, first = x, x_next, 1
    for i in trange(first, len(sigmas) - 1, disable=disable):
        forward, back, denoised = steps(x, i, need_backward=gamma != 0)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        new = forward if back is None else forward + steps.coef[i] * (previous - back)
        previous, x = x, new
    return x


def sample_bdia_ddim(
    model, x, sigmas, extra_args=None, callback=None, disable=None, gamma: float = DEFAULT_GAMMA, frame: str = "auto"
) -> torch.Tensor:
    """BDIA-DDIM (Zhang et al., ECCV 2024): x_{i+1} = DDIM_{i→i+1}(x_i) + c_i·(x_{i−1} − DDIM_{i→i−1}(x_i)),
    c_i = γ·α(σ_{i−1})/α(σ_{i+1}); the first step is DDIM. γ = 0 is DDIM bit for bit."""
    gamma = _options("bdia_ddim", gamma, frame)
    return _run(model, x, sigmas, extra_args, callback, disable, "ddim", gamma, frame, "euler")


def sample_bdia_edm(
    model,
    x,
    sigmas,
    extra_args=None,
    callback=None,
    disable=None,
    gamma: float = DEFAULT_GAMMA,
    backward: str = "euler",
    frame: str = "ve",
) -> torch.Tensor:
    """BDIA applied to EDM's Heun sampler (Zhang et al., ECCV 2024): x_{i+1} = Heun_{i→i+1}(x_i) +
    γ·(x_{i−1} − B_{i→i−1}(x_i)) with B the backward integral from x_i alone (``backward``, see the
    module docstring); the first step is Heun's. γ = 0 is the ``heun`` sampler bit for bit."""
    gamma = _options("bdia_edm", gamma, frame, backward)
    return _run(model, x, sigmas, extra_args, callback, disable, "edm", gamma, frame, backward)


VARIANTS = {"ddim": sample_bdia_ddim, "edm": sample_bdia_edm}


def _variant(sampler: str) -> str:
    name = sampler.removeprefix("bdia_")
    if not sampler.startswith("bdia_") or name not in VARIANTS:
        raise SamplerOptionError(
            f"only BDIA samplers can be inverted exactly; got {sampler!r}, use bdia_ddim or bdia_edm"
        )
    return name


def _resolve(sampler: str, options: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
    variant = _variant(sampler)
    defaults = {
        "ddim": {"gamma": DEFAULT_GAMMA, "frame": "auto"},
        "edm": {"gamma": DEFAULT_GAMMA, "backward": "euler", "frame": "ve"},
    }[variant]
    unknown = set(options) - set(defaults)
    if unknown:
        raise SamplerOptionError(
            f"{sampler} takes the options {', '.join(sorted(defaults))}, not {', '.join(sorted(unknown))}"
        )
    opts = {"frame": "ve", "backward": "euler", **defaults, **options}
    return variant, opts, _options(sampler, opts["gamma"], opts["frame"], opts["backward"])


def bdia_sample(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "bdia_ddim",
    x_next: torch.Tensor | None = None,
    extra_args: dict | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a BDIA sampler from ``x`` (already at σ_0) and return ``(sample, previous)``: the final state and
    the one before it, the pair :func:`bdia_invert` needs. With ``x_next`` the run starts from the pair
    (x_0, x_1) instead of taking the plain first step (what :func:`bdia_invert` returns with
    ``return_next``; for a pair no BDIA run produced, x_1 is not the plain step from x_0)."""
    variant, opts, gamma = _resolve(sampler, options)
    if len(sigmas) < 2:
        raise SamplerOptionError("sigmas must hold at least two values (one step)")
    states: list[torch.Tensor] = [x]
    out = _run(
        model,
        x,
        sigmas,
        extra_args,
        lambda info: states.append(info["x"]),
        True,
        variant,
        gamma,
        opts["frame"],
        opts["backward"],
        x_next,
    )
    return out, states[-1]


def bdia_invert(
    model: Callable,
    sample: torch.Tensor,
    previous: torch.Tensor,
    sigmas: torch.Tensor,
    sampler: str = "bdia_ddim",
    extra_args: dict | None = None,
    disable: bool = True,
    return_next: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The initial state x_0 (at σ_0; divide by σ_0 for standard-normal noise) of the BDIA run on
    ``sigmas`` that ends in ``sample`` with ``previous`` the state before it; with ``return_next``,
    ``(x_0, x_1)``.

    Runs each update backward, x_{i−1} = Q_i(x_i) + (x_{i+1} − P_i(x_i)) / c_i, for i = N−1 … 1: N − 1
    model evaluations for ``bdia_ddim`` (2N − 3 for ``bdia_edm``). ``options`` must be those of the
    forward run (``gamma``, ``frame`` / ``backward``); γ must be positive. For a pair a BDIA run produced,
    x_1 is the plain first step from x_0 and x_0 alone regenerates the pair; for any other pair (a real
    image with an estimated previous state) only (x_0, x_1) does: pass both to :func:`bdia_sample`.
    """
    variant, opts, gamma = _resolve(sampler, options)
    if gamma == 0:
        raise SamplerOptionError(
            f"{sampler} with gamma=0 is the plain sampler, whose steps have no explicit "
            f"inverse; sample and invert with gamma in (0, 1] (1 keeps rounding smallest)"
        )
    if sample.shape != previous.shape:
        raise SamplerOptionError(
            f"sample and previous state must have one shape, got {tuple(sample.shape)} and {tuple(previous.shape)}"
        )
    if len(sigmas) < 2:
        raise SamplerOptionError("sigmas must hold at least two values (one step)")
    steps = _Steps(
        model,
        sigmas.to(sample.device),
        variant,
        gamma,
        resolve_frame(model, opts["frame"]),
        opts["backward"],
        extra_args,
        sample,
    )
    later, x = sample, previous
    for i in trange(len(sigmas) - 2, 0, -1, disable=disable):
        forward, back, _ = steps(x, i)
        later, x = x, back + (later - forward) / steps.coef[i]
    return (x, later) if return_next else x


def previous_state(
    model: Callable, sample: torch.Tensor, sigmas: torch.Tensor, iterations: int = 3, extra_args: dict | None = None
) -> torch.Tensor:
    """A state before ``sample`` for a sample no BDIA run produced (a real image): the x at σ_{N−1} whose
    DDIM step lands on ``sample`` (DDIM inversion of the last step), solved by fixed-point iteration
    x ← sample − (σ_N − σ_{N−1})·ε̂(x), starting from the sample. Any state works for an exact round
    trip (the pair is what gets reproduced); this one makes the recovered noise the DDIM-consistent one."""
    extra_args = extra_args or {}
    sigma, last = sigmas[-2], sigmas[-1]
    ones = sample.new_ones([sample.shape[0]])
    x = sample
    for _ in range(iterations):
        x = sample - to_d(x, sigma, model(x, sigma * ones, **extra_args)) * (last - sigma)
    return x
