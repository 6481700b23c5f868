"""Built-in plugin: the bundled models."""

from registry import ModelSpec, hookimpl

from .. import bundled


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            "digits-ddpm",
            lambda: bundled.load("digits-ddpm"),
            "8x8 digits, discrete DDPM (1000 steps, linear beta), eps-prediction U-Net, class-conditional",
        )
    )
    register(
        ModelSpec(
            "digits-ddpm-small",
            lambda: bundled.load("digits-ddpm-small"),
            "8x8 digits, digits-ddpm's DDPM schedule and data, a ~6x smaller U-Net (T-Stitch's small model)",
        )
    )
    register(
        ModelSpec(
            "digits-edm",
            lambda: bundled.load("digits-edm"),
            "8x8 digits, EDM preconditioning (Karras et al. 2022), same U-Net, class-conditional",
        )
    )
    register(
        ModelSpec(
            "gmm-digits",
            lambda: bundled.load("gmm-digits"),
            "Gaussian mixture fit to the digits with its exact denoiser (no network)",
        )
    )
    register(
        ModelSpec(
            "digits-flow",
            lambda: bundled.load("digits-flow"),
            "8x8 digits, rectified flow (SD3-style: velocity, logit-normal t), same U-Net, class-conditional",
        )
    )
    register(
        ModelSpec(
            "gmm-digits-flow",
            lambda: bundled.load("gmm-digits-flow"),
            "the same Gaussian mixture under the flow path, exact velocity (no network)",
        )
    )
    register(
        ModelSpec(
            "heldout-dit-flow",
            lambda: bundled.load("heldout-dit-flow"),
            "held out (never tuned on): 8x8 digits, diffusion transformer, rectified flow with uniform t at shift 3",
        )
    )
    register(
        ModelSpec(
            "heldout-resnet-v",
            lambda: bundled.load("heldout-resnet-v"),
            "held out (never tuned on): 8x8 digits, all-convolution ResNet, v-prediction on the cosine schedule",
        )
    )
