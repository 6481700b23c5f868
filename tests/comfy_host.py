"""A tiny ComfyUI model in process: ComfyUI's own BaseModel and ModelPatcher around a linear network that records
each call. Import only after checking COMFYUI_PATH (the tests that use it skip without it)."""

from __future__ import annotations

import os
import sys

import torch

COMFYUI = os.environ["COMFYUI_PATH"]
sys.path.insert(0, COMFYUI)

import comfy.cli_args  # noqa: E402

if not torch.cuda.is_available():
    comfy.cli_args.args.cpu = True  # what main.py --cpu does

import comfy.latent_formats  # noqa: E402
import comfy.model_base  # noqa: E402
import comfy.model_management as mm  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models_base  # noqa: E402


class Net(torch.nn.Module):
    dtype = torch.float32

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.calls = []

    def forward(self, x, timesteps, context=None, control=None, transformer_options=None, **kw):
        self.calls.append((x.detach().clone(), timesteps.detach().clone()))
        return self.lin(x.flatten(1)).reshape(x.shape) * 0.1


class Config(comfy.supported_models_base.BASE):
    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config: dict = {}
    latent_format = type("OneChannel", (comfy.latent_formats.LatentFormat,), {"latent_channels": 1})
    memory_usage_factor = 1.0


def make(model_type):
    base = comfy.model_base.BaseModel(Config({"disable_unet_model_creation": True}), model_type=model_type)
    base.diffusion_model = Net()
    return comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
