"""The README's 500-NFE sample grid of the bundled networks: ``python tools/readme_samples.py [OUT.png]``.

Prints, per model, the bundled classifier's mean confidence, the class counts and the FD over
500 samples, so the picture comes with numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import registry
from timetuner_plugins import bundled
from timetuner_plugins.experiments import plots
from timetuner_plugins.bundled.data import digits
from timetuner_plugins.evaluation.evaluate import generate
from timetuner_plugins.evaluation.metrics import digits_fd
from timetuner_plugins.sampling.run import make_sigmas


def main(out: Path) -> None:
    panels = {}
    spec = registry.get_sampler("dpmpp_2m")
    classifier = bundled.load_classifier()
    for name in ("digits-ddpm", "digits-ddpm-small", "digits-edm", "heldout-dit-flow", "heldout-resnet-v"):
        model = registry.load_model(name)
        noise = torch.randn(500, *model.sample_shape, generator=torch.Generator().manual_seed(0))
        samples = generate(model, spec, make_sigmas(model, model.default_schedule, 500), noise)
        with torch.no_grad():
            probs = classifier(samples.clamp(-1, 1)).softmax(1)
        print(
            f"{name}: DPM-Solver++(2M), 500 NFE, 500 samples: classifier confidence "
            f"{float(probs.max(1).values.mean()):.3f}, classes {torch.bincount(probs.argmax(1), minlength=10).tolist()}, "
            f"FD {digits_fd(samples):.1f}"
        )
        panels[f"{name}, 500 NFE"] = {f"{12 * i + 1}–{12 * (i + 1)}": samples[12 * i : 12 * (i + 1)] for i in range(3)}
    real, _ = digits("held_out")
    print(f"held-out digits vs train FD reference: {digits_fd(digits('train')[0]):.1f}")
    panels["held-out digits"] = {f"{12 * i + 1}–{12 * (i + 1)}": real[12 * i : 12 * (i + 1)] for i in range(3)}
    plots.sample_grid(panels, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/samples_500nfe.png"))
