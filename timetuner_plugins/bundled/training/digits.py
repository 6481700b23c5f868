"""Training of the bundled models on sklearn's digits, reproducible from a seed.

``python -m timetuner_plugins.bundled.training {digits-ddpm,digits-ddpm-small,digits-edm,gmm-digits,digits-classifier,digits-features,all}``
writes safetensors files (with their recipe in the metadata) under
``timetuner_plugins/bundled/weights``; ``--steps`` shortens a run for smoke tests.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import trange

from ... import __version__
from .. import nets
from ..data import digits
from ...extras import require
from ...adapters.denoisers import DiscreteVPDenoiser, EDMDenoiser
from ...io import atomic_path

DDPM_BETAS = {"steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
EDM = {"sigma_min": 0.002, "sigma_max": 80.0, "p_mean": -1.2, "p_std": 1.2}
LABEL_DROP = 0.1  # share of training labels replaced by NULL_LABEL, for classifier-free guidance


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, object]) -> None:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int, warmup: int = 200) -> None:
    lr = base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    for group in opt.param_groups:
        group["lr"] = lr


def recipe(steps: int, batch: int, lr: float, seed: int, loss: float, started: float, **extra: object) -> dict:
    """A denoiser's training recipe, as stored in its file's metadata."""
    return {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "ema": 0.999,
        "label_drop": LABEL_DROP,
        **extra,
        "final_loss": loss,
        "seconds": round(time.time() - started, 1),
        "library": __version__,
    }


def _train_denoiser(
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor],
    net: torch.nn.Module,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    desc: str,
) -> tuple[torch.nn.Module, float]:
    images, labels = digits("train")
    gen = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay, running = 0.999, None
    bar = trange(steps, desc=desc)
    for step in bar:
        idx = torch.randint(len(images), (batch,), generator=gen)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(batch, generator=gen) < LABEL_DROP] = nets.NULL_LABEL
        _cosine_lr(opt, lr, step, steps)
        loss = loss_fn(x0, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - d)
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    return ema, float(running or 0.0)


SMALL_UNET = {"channels": 8, "width": 128, "blocks": 2}  # digits-ddpm-small: ~6x fewer parameters, ~4x cheaper


def train_ddpm(
    out: Path,
    steps: int = 20000,
    batch: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    config: dict | None = None,
    name: str = "digits-ddpm",
) -> None:
    """ε-prediction on DDPM's discrete schedule: 1000 steps, linear β 1e-4…0.02 (Ho et al. 2020);
    ``config`` sizes the U-Net (default: the shipped digits-ddpm's)."""
    torch.manual_seed(seed)
    net = nets.DigitsUNet(**(config or {}))
    abar = DiscreteVPDenoiser.linear_betas(**DDPM_BETAS).float()

    def loss_fn(x0, y, gen):
        t = torch.randint(len(abar), (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(net(xt, t.float(), y), noise)

    started = time.time()
    ema, loss = _train_denoiser(loss_fn, net, steps, batch, lr, seed, name)
    _save(
        out,
        {f"net.{k}": v for k, v in ema.state_dict().items()},
        {
            "kind": "vp_discrete",
            "prediction": "eps",
            "betas": DDPM_BETAS,
            "arch": "DigitsUNet",
            "config": ema.config,
            "sample_shape": [1, 8, 8],
            "model_id": name,
            "recipe": recipe(steps, batch, lr, seed, loss, started),
        },
    )


def train_ddpm_small(out: Path, steps: int = 5000, batch: int = 256, lr: float = 2e-3, seed: int = 0) -> None:
    """``digits-ddpm-small``, T-Stitch's small model: digits-ddpm's data and DDPM schedule (so the same σ
    space), a U-Net with ``SMALL_UNET`` sizes, a quarter of the steps (about 5 minutes on 2 CPU cores)."""
    train_ddpm(out, steps=steps, batch=batch, lr=lr, seed=seed, config=SMALL_UNET, name="digits-ddpm-small")


def train_edm(out: Path, steps: int = 20000, batch: int = 256, lr: float = 2e-3, seed: int = 0) -> None:
    """EDM preconditioning and loss (Karras et al. 2022): log-normal σ, λ(σ) = (σ²+σ_d²)/(σ·σ_d)²."""
    torch.manual_seed(seed)
    images, _ = digits("train")
    sigma_data = round(float(images.std()), 3)
    net = nets.DigitsUNet(label_scale=250.0)
    model = EDMDenoiser(net, sigma_data, EDM["sigma_min"], EDM["sigma_max"])

    def loss_fn(x0, y, gen):
        sigma = (torch.randn(len(x0), generator=gen) * EDM["p_std"] + EDM["p_mean"]).exp()
        noisy = x0 + torch.randn(x0.shape, generator=gen) * sigma.view(-1, 1, 1, 1)
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        per = ((model(noisy, sigma, label=y) - x0) ** 2).mean(dim=(1, 2, 3))
        return (weight * per).mean()

    started = time.time()
    ema, loss = _train_denoiser(loss_fn, net, steps, batch, lr, seed, "digits-edm")
    _save(
        out,
        {f"net.{k}": v for k, v in ema.state_dict().items()},
        {
            "kind": "edm",
            "sigma_data": str(sigma_data),
            "sigma_min": str(EDM["sigma_min"]),
            "sigma_max": str(EDM["sigma_max"]),
            "arch": "DigitsUNet",
            "config": ema.config,
            "sample_shape": [1, 8, 8],
            "model_id": "digits-edm",
            "recipe": recipe(steps, batch, lr, seed, loss, started, **EDM),
        },
    )


FLOW = {"prediction": "v", "multiplier": 1000.0, "timesteps": 1000, "logit_mean": 0.0, "logit_std": 1.0}


def train_flow(
    out: Path, steps: int = 20000, batch: int = 256, lr: float = 2e-3, seed: int = 0, shift: float = 1.0
) -> None:
    """Rectified flow (Liu et al. 2023; SD3's recipe, Esser et al. 2024): x_t = (1 − t)·x₀ + t·ε with t drawn
    logit-normal (mean 0, std 1), the network conditioned on 1000·t and trained to predict v = ε − x₀.
    ``shift`` is recorded for sampling (the σ table's time shift), not used in training."""
    torch.manual_seed(seed)
    net = nets.DigitsUNet()

    def loss_fn(x0, y, gen):
        t = torch.sigmoid(torch.randn(len(x0), generator=gen) * FLOW["logit_std"] + FLOW["logit_mean"])
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        return F.mse_loss(net(xt, t * FLOW["multiplier"], y), noise - x0)

    started = time.time()
    ema, loss = _train_denoiser(loss_fn, net, steps, batch, lr, seed, "digits-flow")
    _save(
        out,
        {f"net.{k}": v for k, v in ema.state_dict().items()},
        {
            "kind": "flow",
            "prediction": FLOW["prediction"],
            "shift": str(shift),
            "multiplier": str(FLOW["multiplier"]),
            "timesteps": str(FLOW["timesteps"]),
            "arch": "DigitsUNet",
            "config": ema.config,
            "sample_shape": [1, 8, 8],
            "model_id": "digits-flow",
            "recipe": recipe(steps, batch, lr, seed, loss, started, **FLOW),
        },
    )


def fit_gmm(out: Path, components: int = 10, reg_covar: float = 1e-3, seed: int = 0) -> None:
    """A full-covariance Gaussian mixture fit by EM (scikit-learn) to the training digits."""
    GaussianMixture = require("sklearn.mixture", "scikit-learn", "training the GMM model").GaussianMixture

    images, _ = digits("train")
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=reg_covar, random_state=seed, max_iter=500)
    gmm.fit(images.reshape(len(images), -1).double().numpy())
    _save(
        out,
        {
            "weights": torch.from_numpy(gmm.weights_),
            "means": torch.from_numpy(gmm.means_),
            "covariances": torch.from_numpy(gmm.covariances_),
        },
        {
            "kind": "gmm",
            "sample_shape": [1, 8, 8],
            "model_id": "gmm-digits",
            "recipe": {
                "components": components,
                "reg_covar": reg_covar,
                "seed": seed,
                "converged": bool(gmm.converged_),
                "library": __version__,
            },
        },
    )


def train_classifier(
    out: Path,
    steps: int = 4000,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    channels: int = 32,
    name: str = "digits-classifier",
) -> None:
    """A conv digits classifier trained with ±1-pixel shifts and light noise: with the defaults, the FD
    feature network; ``train_features`` makes the tuner's independent one."""
    torch.manual_seed(seed)
    images, labels = digits("train")
    gen = torch.Generator().manual_seed(seed)
    net = nets.DigitsClassifier(channels=channels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for step in trange(steps, desc=name):
        idx = torch.randint(len(images), (batch,), generator=gen)
        x = images[idx]
        dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        x = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1.2, 1.2)
        _cosine_lr(opt, lr, step, steps)
        loss = F.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    held, held_labels = digits("held_out")
    with torch.no_grad():
        accuracy = float((net(held).argmax(1) == held_labels).float().mean())
    _save(
        out,
        {f"net.{k}": v for k, v in net.state_dict().items()},
        {
            "arch": "DigitsClassifier",
            "config": net.config,
            "model_id": name,
            "recipe": {
                "steps": steps,
                "batch": batch,
                "lr": lr,
                "seed": seed,
                "held_out_accuracy": accuracy,
                "library": __version__,
            },
        },
    )
    print(f"{name} held-out accuracy: {accuracy:.4f}")


def train_features(out: Path, steps: int = 4000, seed: int = 1) -> None:
    """The tuner's feature network for the digits models: a classifier of another width and seed than the
    FD metric's, so that tuning in its features does not optimise the metric's own features."""
    train_classifier(out, steps=steps, seed=seed, channels=24, name="digits-features")
