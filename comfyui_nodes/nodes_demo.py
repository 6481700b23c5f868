"""Nodes: Demo Model Loader, Demo Digit Conditioning, Demo Decode (the bundled digits models)."""

from __future__ import annotations

from comfy_api.latest import io

from . import demo_model
from .nodes_sets import CATEGORY

DIGITS = ["none"] + [str(d) for d in range(10)]
MODELS = ("digits-ddpm", "digits-edm", "digits-flow")  # the flow model: a CONST model, shift in its own sampling


class DemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerDemoModelLoader",
            display_name="Demo Model Loader (digits)",
            category=CATEGORY,
            description="A bundled 8×8 digits model as a MODEL (use a 64×64 Empty Latent Image); digits-flow is a "
            "rectified-flow (CONST) model like SD3, so ModelSamplingSD3 changes its shift.",
            inputs=[io.Combo.Input("model_name", options=list(MODELS), default="digits-ddpm")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        return True if model_name in MODELS else f"unknown demo model {model_name!r}; choose {', '.join(MODELS)}"

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        return io.NodeOutput(demo_model.load(model_name))


class DemoDigitConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerDemoDigitConditioning",
            display_name="Demo Digit Conditioning",
            category=CATEGORY,
            description="Conditioning for the demo models: a digit, or 'none' (unconditional; use as negative).",
            inputs=[io.Combo.Input("digit", options=DIGITS, default="none")],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def validate_inputs(cls, digit: str) -> bool | str:
        return True if digit in DIGITS else f"digit must be one of {', '.join(DIGITS)}"

    @classmethod
    def execute(cls, digit: str) -> io.NodeOutput:
        return io.NodeOutput(demo_model.conditioning(None if digit == "none" else int(digit)))


class DemoDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TimeTunerDemoDecode",
            display_name="Demo Decode (digits)",
            category=CATEGORY,
            description="The demo models' 8×8 output as an IMAGE, enlarged without smoothing.",
            inputs=[io.Latent.Input("samples"), io.Int.Input("scale", default=8, min=1, max=64)],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, samples, scale: int) -> io.NodeOutput:
        return io.NodeOutput(demo_model.decode(samples["samples"], scale))
