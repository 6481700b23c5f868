"""diffusers model classes built from published configs with random weights, full size or reduced width.

No weights are downloaded (none can be here, and none are needed to measure memory and time or to test
the adapters): every network is built from its config with diffusers' own initialisation, seeded.

Full-size configs are the values of the published ``config.json`` files of each model's diffusers repository
on the Hugging Face hub, read from copies of them (the hub itself cannot be reached from here):

- ``sd15``: ``stable-diffusion-v1-5/stable-diffusion-v1-5`` ``unet/config.json`` and its PNDM
  ``scheduler/scheduler_config.json`` (the latter as printed in diffusers' docs,
  ``docs/source/*/using-diffusers/schedulers.md``);
- ``sdxl``: ``stabilityai/stable-diffusion-xl-base-1.0`` ``unet/config.json`` (``addition_embed_type``
  ``"text_time"``, ``transformer_layers_per_block`` [1, 2, 10], ``projection_class_embeddings_input_dim`` 2816)
  and its EulerDiscrete scheduler config (diffusers' ``loaders/single_file_utils.py`` holds the same values as
  ``SCHEDULER_DEFAULT_CONFIG``);
- ``sd3``: ``stabilityai/stable-diffusion-3-medium-diffusers`` ``transformer/config.json`` and its
  FlowMatchEulerDiscrete scheduler config (``shift`` 3.0);
- ``flux``: ``black-forest-labs/FLUX.1-dev`` ``transformer/config.json`` (guidance-distilled:
  ``guidance_embeds`` true) and its scheduler config (dynamic shift, μ from the image's token count).

``tiny`` variants keep each class and its structure (cross-attention, SDXL's added conditions, SD3's joint
attention, Flux's double and single blocks, rotary ids, guidance embedding) at a width of a few million
parameters or less, for tests. ``ddpm`` is a pixel-space :class:`diffusers.UNet2DModel` (no full-size config).

Do not build the full ``sdxl`` (2.6 B parameters), ``sd3`` (2 B) or ``flux`` (12 B) on a small machine:
:func:`parameter_count` counts them on the meta device, which allocates nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

SD_SCHEDULER = {  # SD1.5's scheduler_config.json (PNDMScheduler)
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
SDXL_SCHEDULER = {  # SDXL base 1.0's scheduler_config.json (EulerDiscreteScheduler)
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
DDPM_SCHEDULER = {  # DDPM's linear β (Ho et al. 2020), diffusers' DDPMScheduler defaults
    "_class_name": "DDPMScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "prediction_type": "epsilon",
}

FULL = {
    "sd15": {
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    },
    "sdxl": {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    },
    "sd3": {
        "attention_head_dim": 64,
        "caption_projection_dim": 1536,
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 24,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "sample_size": 128,
    },
    "flux": {
        "attention_head_dim": 128,
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
        "axes_dims_rope": [16, 56, 56],
    },
}

TINY = {
    "ddpm": {
        "sample_size": 8,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 1,
        "block_out_channels": [16, 32],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    "sd15": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "sdxl": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": [2, 4],
        "cross_attention_dim": 64,
        "transformer_layers_per_block": [1, 2],
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 32 + 6 * 8,
        "norm_num_groups": 8,
    },
    "sd3": {
        "sample_size": 8,
        "patch_size": 2,
        "in_channels": 4,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "joint_attention_dim": 32,
        "caption_projection_dim": 32,
        "pooled_projection_dim": 16,
        "pos_embed_max_size": 16,
    },
    "flux": {
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 16,
        "guidance_embeds": True,
        "axes_dims_rope": [4, 6, 6],
    },
}

CLASSES = {
    "ddpm": "UNet2DModel",
    "sd15": "UNet2DConditionModel",
    "sdxl": "UNet2DConditionModel",
    "sd3": "SD3Transformer2DModel",
    "flux": "FluxTransformer2DModel",
}
SCHEDULERS = {
    "ddpm": DDPM_SCHEDULER,
    "sd15": SD_SCHEDULER,
    "sdxl": SDXL_SCHEDULER,
    "sd3": SD3_SCHEDULER,
    "flux": FLUX_SCHEDULER,
}
TEXT = {  # (text tokens, embedding width, pooled width) of the conditioning each model takes
    ("sd15", "full"): (77, 768, None),
    ("sdxl", "full"): (77, 2048, 1280),
    ("sd3", "full"): (333, 4096, 2048),
    ("flux", "full"): (512, 4096, 768),
    ("sd15", "tiny"): (8, 32, None),
    ("sdxl", "tiny"): (8, 64, 32),
    ("sd3", "tiny"): (8, 32, 16),
    ("flux", "tiny"): (8, 32, 16),
}
LATENT = {  # the latent (channels, height, width) of a default-size image: SD1.5 512², SDXL / SD3 / Flux 1024²
    ("ddpm", "tiny"): (3, 8, 8),
    ("sd15", "full"): (4, 64, 64),
    ("sdxl", "full"): (4, 128, 128),
    ("sd3", "full"): (16, 128, 128),
    ("flux", "full"): (16, 128, 128),
    ("sd15", "tiny"): (4, 8, 8),
    ("sdxl", "tiny"): (4, 8, 8),
    ("sd3", "tiny"): (4, 8, 8),
    ("flux", "tiny"): (4, 8, 8),
}


@dataclass
class Built:
    """A built network, its scheduler config, and example conditioning of the right shapes."""

    name: str
    size: str
    model: torch.nn.Module
    scheduler_config: dict[str, Any]
    latent: tuple[int, int, int]
    extra: dict[str, Any] = field(default_factory=dict)


def config(name: str, size: str = "tiny") -> dict[str, Any]:
    """The model config (a copy) for ``name`` in ``("ddpm", "sd15", "sdxl", "sd3", "flux")`` and ``size``
    ``"tiny"`` or ``"full"``."""
    table = TINY if size == "tiny" else FULL if size == "full" else None
    if table is None or name not in table:
        known = sorted(TINY) if size == "tiny" else sorted(FULL)
        raise ValueError(f"no {size!r} config for {name!r}; sizes: tiny, full; names for {size!r}: {', '.join(known)}")
    return copy.deepcopy(table[name])


def model_class(name: str) -> type:
    import diffusers

    return getattr(diffusers, CLASSES[name])


def build(
    name: str,
    size: str = "tiny",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    scheduler_overrides: dict[str, Any] | None = None,
) -> Built:
    """Build ``name`` at ``size`` with random weights (seeded) on ``device`` (``"meta"`` allocates nothing)."""
    cls = model_class(name)
    cfg = config(name, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = cls(**cfg)
    if dtype != torch.float32:  # the classes build in float32
        model = model.to(dtype=dtype)
    model = model.eval().requires_grad_(False)
    scheduler = {**copy.deepcopy(SCHEDULERS[name]), **(scheduler_overrides or {})}
    latent = LATENT[(name, size)]
    extra = {} if str(device) == "meta" else conditioning(name, size, batch=1, seed=seed + 1)
    return Built(name, size, model, scheduler, latent, extra)


def parameter_count(name: str, size: str = "full") -> int:
    """Parameters of ``name`` at ``size``, counted on the meta device (no memory is allocated)."""
    return sum(p.numel() for p in build(name, size, device="meta").model.parameters())


def conditioning(
    name: str, size: str = "tiny", batch: int = 1, seed: int = 0, latent: tuple[int, int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Random conditioning of the shapes ``name`` takes (text embeddings, pooled embeddings, SDXL's time ids,
    Flux's position ids and guidance), as the adapters' extra arguments; ``{}`` for the unconditional ``ddpm``."""
    if name == "ddpm":
        return {}
    tokens, width, pooled = TEXT[(name, size)]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"encoder_hidden_states": torch.randn(batch, tokens, width, generator=gen)}
    if name == "sdxl":
        h, w = (latent or LATENT[(name, size)])[1:]
        out["text_embeds"] = torch.randn(batch, pooled, generator=gen)
        out["time_ids"] = torch.tensor([[h * 8, w * 8, 0, 0, h * 8, w * 8]], dtype=torch.float32).expand(batch, 6)
    elif name in ("sd3", "flux"):
        out["pooled_projections"] = torch.randn(batch, pooled, generator=gen)
    if name == "flux":
        h, w = (latent or LATENT[(name, size)])[1:]
        out["txt_ids"] = torch.zeros(tokens, 3)
        out["img_ids"] = flux_image_ids(h, w)
        out["guidance"] = torch.full((batch,), 3.5)
    return out


def flux_image_ids(height: int, width: int) -> torch.Tensor:
    """Flux's rotary position ids of a latent of ``height`` × ``width`` (before packing): one row per 2 × 2
    patch, (0, row, column), as FluxPipeline lays them out."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


def pack_flux(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents as Flux's (B, H/2 · W/2, 4C) token sequence (2 × 2 patches), as FluxPipeline packs them."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_flux(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_flux` for a latent of ``height`` × ``width``."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def tiny_pipeline(name: str = "sd15", scheduler: str | None = None, seed: int = 0) -> Any:
    """A diffusers pipeline built here from tiny configs with random weights, for tests and examples:

    - ``"sd15"``: a StableDiffusionPipeline with the tiny SD1.5-style UNet, a tiny VAE (16 × 16 images, 8 × 8
      latents), a random CLIP text encoder and a CLIP tokenizer over a 54-token character vocabulary written here
      (so prompts work offline); no safety checker;
    - ``"flux"``: a FluxPipeline with the tiny Flux transformer and no text encoders or VAE: call it with
      ``prompt_embeds`` / ``pooled_prompt_embeds`` and ``output_type="latent"`` (64 × 64 images, 8 × 8 latents).

    ``scheduler``: a diffusers scheduler class name built from the model's scheduler config (default: the
    published model's own, PNDM for SD1.5)."""
    import json
    import tempfile

    import diffusers

    built = build(name, "tiny", seed=seed)
    config = dict(built.scheduler_config)
    cls = getattr(diffusers, scheduler or config.pop("_class_name"))
    config.pop("_class_name", None)
    sched = cls.from_config(config)
    if name == "flux":
        return diffusers.FluxPipeline(
            scheduler=sched,
            vae=None,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=None,
            tokenizer_2=None,
            transformer=built.model,
        )
    if name != "sd15":
        raise ValueError(f"tiny pipelines: sd15, flux; not {name!r}")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for suffix in ("", "</w>"):
            for c in "abcdefghijklmnopqrstuvwxyz":
                vocab[c + suffix] = len(vocab)
        with open(f"{tmp}/vocab.json", "w") as f:
            json.dump(vocab, f)
        with open(f"{tmp}/merges.txt", "w") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer(f"{tmp}/vocab.json", f"{tmp}/merges.txt", model_max_length=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=8,
                projection_dim=32,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
        vae = diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=[8, 16],
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            norm_num_groups=8,
            sample_size=16,
        )
    return diffusers.StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text.eval(),
        tokenizer=tokenizer,
        unet=built.model,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
