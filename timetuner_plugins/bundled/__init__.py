"""The bundled models: safetensors weights under ``timetuner_plugins/bundled/weights`` (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..evaluation import metrics
from . import nets
from ..adapters.denoisers import DiscreteVPDenoiser, EDMDenoiser, FlowDenoiser, TunableDenoiser
from .gmm import GMMDenoiser, GMMFlowDenoiser

WEIGHTS = Path(__file__).resolve().parent / "weights"
FILES = {
    "digits-ddpm": "digits_ddpm.safetensors",
    "digits-ddpm-small": "digits_ddpm_small.safetensors",
    "digits-edm": "digits_edm.safetensors",
    "digits-flow": "digits_flow.safetensors",
    "heldout-dit-flow": "heldout_dit_flow.safetensors",
    "heldout-resnet-v": "heldout_resnet_v.safetensors",
    "gmm-digits": "gmm_digits.safetensors",
    "digits-classifier": "digits_classifier.safetensors",
    "digits-features": "digits_features.safetensors",
}


def weights_path(name: str) -> Path:
    path = WEIGHTS / FILES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled weights for {name!r} are missing at {path}; reinstall the package or "
            f"rebuild them with `python -m timetuner_plugins.bundled.training {name}`"
        )
    return path


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return load_file(str(path)), metadata


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _net(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> torch.nn.Module:
    net = nets.build(metadata["arch"], json.loads(metadata["config"]))
    net.load_state_dict(_strip(tensors, "net."))
    return net.eval().requires_grad_(False)


GMM_FLOW_SHIFT = 1.0  # gmm-digits-flow's time shift: digits-flow's (recorded in its weights)


def load(name: str) -> TunableDenoiser:
    """A bundled diffusion model as a tunable denoiser, on CPU, in eval mode."""
    if name == "gmm-digits-flow":  # the mixture of gmm-digits under the flow path: no file of its own
        model: TunableDenoiser = GMMFlowDenoiser(load_path(weights_path("gmm-digits")), GMM_FLOW_SHIFT)
        model.model_id = name
        return model.eval().requires_grad_(False)
    return load_path(weights_path(name), name)


def load_path(path: Path, name: str | None = None) -> TunableDenoiser:
    """A diffusion model from a weights file written by the training scripts."""
    tensors, metadata = read_weights(path)
    kind = metadata.get("kind")
    if kind == "vp_discrete":
        betas = json.loads(metadata["betas"])
        schedule = betas.pop("schedule", "linear")
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"{path}: unknown β schedule {schedule!r} in its weights file (linear or cosine)")
        abar = (DiscreteVPDenoiser.linear_betas if schedule == "linear" else DiscreteVPDenoiser.cosine_betas)(**betas)
        model: TunableDenoiser = DiscreteVPDenoiser(_net(tensors, metadata), abar, metadata["prediction"])
    elif kind == "edm":
        model = EDMDenoiser(
            _net(tensors, metadata),
            float(metadata["sigma_data"]),
            float(metadata["sigma_min"]),
            float(metadata["sigma_max"]),
        )
    elif kind == "flow":
        model = FlowDenoiser(
            _net(tensors, metadata),
            metadata["prediction"],
            float(metadata["shift"]),
            float(metadata["multiplier"]),
            int(metadata["timesteps"]),
        )
    elif kind == "gmm":
        model = GMMDenoiser(
            tensors["weights"], tensors["means"], tensors["covariances"], tuple(json.loads(metadata["sample_shape"]))
        )
    else:
        raise ValueError(f"{path}: unknown model kind {kind!r} in its weights file")
    model.sample_shape = tuple(json.loads(metadata.get("sample_shape", "[1, 8, 8]")))
    model.model_id = name or metadata.get("model_id", path.stem)
    if kind != "gmm":  # the digits networks: their data, its FD and a classifier's features (GMMs have their own)
        model.quality_metric = metrics.digits_metric
        model.sample_data = digits_sample
        model.tuning_features = DigitsFeatures()
    return model.eval().requires_grad_(False)


def digits_sample(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` training digits drawn with replacement: the digits models' real data."""
    from .data import digits

    images, _ = digits("train")
    return images[torch.randint(len(images), (n,), generator=generator)]


def load_classifier(name: str = "digits-classifier") -> nets.DigitsClassifier:
    tensors, metadata = read_weights(weights_path(name))
    return _net(tensors, metadata)


class DigitsFeatures:
    """The tuner's feature space for the digits models: the 64-d features of ``digits-features``, a
    classifier trained apart from the FD metric's (other seed and width). Runs on the samples' device.
    A plain attribute, not a submodule, so the denoiser's fingerprint does not include it."""

    name = "digits-features"

    def __init__(self) -> None:
        self._nets: dict[tuple[torch.device, torch.dtype], nets.DigitsClassifier] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._nets:
            self._nets[key] = load_classifier(self.name).to(x.device, x.dtype)
        return self._nets[key].features(x.clamp(-1, 1))
