"""The bundled digits models as ComfyUI MODELs, so whole workflows run on CPU with no checkpoint."""

from __future__ import annotations

import json

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models_base
from timetuner_plugins import bundled
from timetuner_plugins.bundled import nets
from timetuner_plugins.adapters.denoisers import DiscreteVPDenoiser

from .tau_patch import fractional_timestep


class DigitsLatent(comfy.latent_formats.LatentFormat):
    """One channel of 8×8 "latents" that are the digit images themselves (range −1…1)."""

    latent_channels = 1
    scale_factor = 1.0


class DigitsNet(nets.DigitsUNet):
    """The bundled U-Net with the call ComfyUI makes: ``net(x, timesteps, context=None, y=None, ...)``."""

    dtype = torch.float32

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, y=None, **kwargs):
        label = None if y is None else y.reshape(-1).round().long()
        return super().forward(x, timesteps, label)


class DigitsDiscreteSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """DDPM's linear β schedule (1e-4…0.02, as trained) with fractional timesteps, like the library."""

    def __init__(self, betas: torch.Tensor):
        super().__init__(None)
        self._register_schedule(given_betas=betas)
        self._fractional = fractional_timestep(self.log_sigmas.double())

    def timestep(self, sigma):
        return self._fractional(sigma).to(sigma.dtype)


def _sampling_settings(kind: str, metadata: dict) -> dict:
    if kind == "edm":
        return {
            "sigma_min": float(metadata["sigma_min"]),
            "sigma_max": float(metadata["sigma_max"]),
            "sigma_data": float(metadata["sigma_data"]),
        }
    if kind == "flow":  # read by ModelSamplingDiscreteFlow, as an SD3 checkpoint's config is
        return {"shift": float(metadata["shift"]), "multiplier": float(metadata["multiplier"])}
    return {}


MODEL_TYPES = {"edm": "EDM", "flow": "FLOW", "vp_discrete": "EPS"}


def _config(kind: str, metadata: dict) -> comfy.supported_models_base.BASE:
    class DigitsConfig(comfy.supported_models_base.BASE):
        unet_config = {"disable_unet_model_creation": True}
        unet_extra_config: dict = {}
        latent_format = DigitsLatent
        memory_usage_factor = 1.0
        sampling_settings = _sampling_settings(kind, metadata)

    return DigitsConfig({"disable_unet_model_creation": True})


class DigitsModel(comfy.model_base.BaseModel):
    """A BaseModel around the bundled network; class labels arrive through conditioning as ``y``. The flow model is
    a FLOW (CONST) model with its own ModelSamplingDiscreteFlow (shift from its weights), as SD3 checkpoints are."""

    def __init__(self, name: str, device=None):
        tensors, metadata = bundled.read_weights(bundled.weights_path(name))
        kind = metadata["kind"]
        model_type = getattr(comfy.model_base.ModelType, MODEL_TYPES[kind])
        super().__init__(_config(kind, metadata), model_type=model_type, device=device)
        # Built as ComfyUI's own loaders build a checkpoint's model: inside the executor's inference mode, so the Tune
        # node meets inference tensors here as it does on a real checkpoint (and makes them ordinary itself).
        net = DigitsNet(**json.loads(metadata["config"]))
        net.load_state_dict({k[len("net.") :]: v.clone() for k, v in tensors.items() if k.startswith("net.")})
        self.diffusion_model = net.eval().requires_grad_(False)
        if kind == "vp_discrete":
            abar = DiscreteVPDenoiser.linear_betas(**json.loads(metadata["betas"]))
            betas = 1 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
            self.model_sampling = DigitsDiscreteSampling(betas)
        self.bundled_name = name

    def encode_adm(self, **kwargs):
        return kwargs.get("digit_label")


def load(name: str) -> comfy.model_patcher.ModelPatcher:
    model = DigitsModel(name)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def conditioning(digit: int | None) -> list:
    """CONDITIONING that asks for one digit (None: the unconditional, "null" label)."""
    label = nets.NULL_LABEL if digit is None else int(digit)
    return [[torch.zeros(1, 1, 8), {"digit_label": torch.tensor([label])}]]


def decode(latent: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """Digits (B, 1, 8, 8) in −1…1 to an IMAGE (B, 8·scale, 8·scale, 3) in 0…1, ink bright."""
    x = latent[:, :1].float().clamp(-1, 1)
    x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest")
    return ((x + 1) / 2).repeat(1, 3, 1, 1).movedim(1, -1).contiguous().cpu()
