"""Where a tuned set moves the samples, in statistics that need no classifier: FD, trajectory error, the energy
distance to the 500-NFE reference on the pixels and on each band of a Laplacian-style pyramid (8×8 detail, 4×4,
2×2, the mean), and the samples' pixel std and total variation, for the plain sampler and the set, 1000 evaluation
samples: ``python tools/band_energy.py tuned_sets/digits-ddpm/dpmpp_2m_ddim_uniform_nfe5.safetensors``."""

import sys

import torch
import torch.nn.functional as F

from timetuner_plugins import TunedSet, bundled
from timetuner_plugins.evaluation.evaluate import EVAL_SEED, eval_noise, generate, reference
from timetuner_plugins.evaluation.metrics import fd_metric, trajectory_error
from timetuner_plugins.sampling.run import sampler_spec
from timetuner_plugins.tuning.objectives import energy_distance


def bands(x: torch.Tensor) -> list[torch.Tensor]:
    """The detail at each scale (the image minus its 2×2-pooled copy, upsampled), finest first, then the mean."""
    out = []
    while x.shape[-1] > 1:
        low = F.avg_pool2d(x, 2)
        out.append((x - F.interpolate(low, scale_factor=2, mode="nearest")).flatten(1))
        x = low
    return out + [x.flatten(1)]


def total_variation(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean())


def row(name: str, samples: torch.Tensor, ref: torch.Tensor, fd) -> str:
    per_band = " / ".join(f"{energy_distance(a, b).item():.4f}" for a, b in zip(bands(samples), bands(ref)))
    return (
        f"| {name} | {fd(samples):.1f} | {trajectory_error(samples, ref):.4f} | "
        f"{energy_distance(samples, ref).item():.4f} | {per_band} | {samples.std().item():.3f} | "
        f"{total_variation(samples):.3f} |"
    )


def main(paths: list[str]) -> None:
    print("| set | run | FD | traj | energy | energy per band (8×8 / 4×4 / 2×2 / mean) | std | TV |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for path in paths:
        ts = TunedSet.load(path)
        model, spec = bundled.load(ts.model_id), sampler_spec(ts.sampler)
        noise = eval_noise(1000, tuple(model.sample_shape), EVAL_SEED)
        ref = reference(model, spec, ts.schedule, noise, start_sigma=float(ts.sigmas[0]))
        plain = generate(model, spec, ts.sigmas, noise)
        tuned = generate(model, spec, ts.sigmas, noise, lookup=ts.lookup())
        fd, name = fd_metric(model), path.split("tuned_sets/")[-1]
        print(f"| `{name}` " + row("plain", plain, ref, fd))
        print(f"| `{name}` " + row("tuned", tuned, ref, fd))
        print(
            f"| `{name}` | 500-NFE reference | {fd(ref):.1f} | | | | {ref.std().item():.3f} | {total_variation(ref):.3f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
