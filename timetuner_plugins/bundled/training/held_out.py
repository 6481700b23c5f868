"""The held-out models: trained once for evaluation, never used to choose a design or a default.

Each differs from every bundled model in architecture and in training recipe, so that a tuner setting that
only suits the bundled U-Net or its recipes shows up as a worse result here:

- ``heldout-dit-flow``: a diffusion transformer (:class:`~timetuner_plugins.bundled.nets.DigitsDiT`, adaLN-Zero,
  Peebles & Xie 2023) trained as a rectified flow with velocity prediction, t uniform and shifted by 3
  (SD3's recipe for high resolutions, Esser et al. 2024 §5.3.2), against ``digits-flow``'s U-Net with
  logit-normal t and shift 1.
- ``heldout-resnet-v``: an all-convolution residual network (:class:`~timetuner_plugins.bundled.nets.DigitsResNet`)
  trained with v-prediction (Salimans & Ho 2022) on the cosine schedule (Nichol & Dhariwal 2021), against
  ``digits-ddpm``'s ε-prediction on the linear schedule.

Both are smaller and trained shorter than the bundled models (2 CPU cores); their recipes are in their files.
Never retrain or change them to suit the tuner: that would make them tuned-on models.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import nets
from ...adapters.denoisers import DiscreteVPDenoiser, flow_shift
from .digits import _save, _train_denoiser, recipe

DIT = {"width": 96, "depth": 3, "heads": 4}
RESNET = {"channels": 32, "blocks": 3}
DIT_FLOW = {"prediction": "v", "multiplier": 1000.0, "timesteps": 1000, "shift": 3.0}
COSINE = {"schedule": "cosine", "steps": 1000}


def train_dit_flow(out: Path, steps: int = 6000, batch: int = 128, lr: float = 1e-3, seed: int = 10) -> None:
    """``heldout-dit-flow``: rectified flow, v = ε − x₀, t ~ U(0, 1) shifted by 3, the network sees 1000·σ."""
    torch.manual_seed(seed)
    net = nets.DigitsDiT(**DIT)
    shift = torch.tensor(DIT_FLOW["shift"], dtype=torch.float64)

    def loss_fn(x0, y, gen):
        sigma = flow_shift(shift, torch.rand(len(x0), generator=gen, dtype=torch.float64)).float()
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma.view(-1, 1, 1, 1)
        return F.mse_loss(net((1 - s) * x0 + s * noise, sigma * DIT_FLOW["multiplier"], y), noise - x0)

    started = time.time()
    ema, loss = _train_denoiser(loss_fn, net, steps, batch, lr, seed, "heldout-dit-flow")
    _save(
        out,
        {f"net.{k}": v for k, v in ema.state_dict().items()},
        {
            "kind": "flow",
            "prediction": DIT_FLOW["prediction"],
            "shift": str(DIT_FLOW["shift"]),
            "multiplier": str(DIT_FLOW["multiplier"]),
            "timesteps": str(DIT_FLOW["timesteps"]),
            "arch": "DigitsDiT",
            "config": ema.config,
            "sample_shape": [1, 8, 8],
            "model_id": "heldout-dit-flow",
            "recipe": recipe(
                steps, batch, lr, seed, loss, started, t_sampling="uniform, shifted", **DIT_FLOW, held_out=True
            ),
        },
    )


def train_resnet_v(out: Path, steps: int = 6000, batch: int = 128, lr: float = 1e-3, seed: int = 11) -> None:
    """``heldout-resnet-v``: discrete VP on the cosine schedule (1000 steps), v = √ᾱ·ε − √(1 − ᾱ)·x₀."""
    torch.manual_seed(seed)
    net = nets.DigitsResNet(**RESNET)
    abar = DiscreteVPDenoiser.cosine_betas(COSINE["steps"]).float()

    def loss_fn(x0, y, gen):
        t = torch.randint(len(abar), (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(net(xt, t.float(), y), a.sqrt() * noise - (1 - a).sqrt() * x0)

    started = time.time()
    ema, loss = _train_denoiser(loss_fn, net, steps, batch, lr, seed, "heldout-resnet-v")
    _save(
        out,
        {f"net.{k}": v for k, v in ema.state_dict().items()},
        {
            "kind": "vp_discrete",
            "prediction": "v",
            "betas": COSINE,
            "arch": "DigitsResNet",
            "config": ema.config,
            "sample_shape": [1, 8, 8],
            "model_id": "heldout-resnet-v",
            "recipe": recipe(steps, batch, lr, seed, loss, started, betas=COSINE, held_out=True),
        },
    )
