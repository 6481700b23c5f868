"""Parameter counts and memory of the full-size diffusers configs, and one measured point for SD1.5.

    python tools/diffusers_sizes.py [--build-sd15] [--latent 32]

Counts SD1.5, SDXL-base, SD3-medium and Flux-dev on the meta device (nothing is allocated; their weights' sizes in
float32 / bf16 follow from the counts). With --build-sd15 it also builds SD1.5's UNet with random weights (about
3.4 GB of float32) and times its construction, the adapter's sampled fingerprint against a sha256 of every byte,
and one adapter evaluation at a LATENT × LATENT latent (batch 1, random text embeddings).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-sd15", action="store_true")
    parser.add_argument("--latent", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from timetuner_plugins.adapters import diffusers_configs as dc

    report: dict = {"torch_threads": torch.get_num_threads(), "models": {}}
    for name in ("sd15", "sdxl", "sd3", "flux"):
        n = dc.parameter_count(name)
        report["models"][name] = {
            "class": dc.CLASSES[name],
            "parameters": n,
            "float32_gb": round(n * 4 / 1e9, 2),
            "bf16_gb": round(n * 2 / 1e9, 2),
        }
    if args.build_sd15:
        report["sd15_built"] = build_sd15(dc, args.latent)
    print(json.dumps(report, indent=2))


def build_sd15(dc, latent: int) -> dict:
    from timetuner_plugins.adapters.denoisers import fingerprint_tensors
    from timetuner_plugins.adapters.diffusers import adapt

    out: dict = {"rss_before_gb": round(rss_gb(), 2)}
    started = time.perf_counter()
    built = dc.build("sd15", "full")
    out["build_s"] = round(time.perf_counter() - started, 1)
    out["parameters"] = sum(p.numel() for p in built.model.parameters())
    out["weights_gb"] = round(sum(p.numel() * p.element_size() for p in built.model.parameters()) / 1e9, 2)
    out["rss_after_build_gb"] = round(rss_gb(), 2)
    model = adapt(built.model, built.scheduler_config, latent_size=(latent, latent))
    started = time.perf_counter()
    fingerprint = model.fingerprint
    out["sampled_fingerprint_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    fingerprint_tensors(dict(built.model.state_dict()))
    out["full_sha256_s"] = round(time.perf_counter() - started, 1)
    out["fingerprint"] = fingerprint[:16]
    x = torch.randn(1, 4, latent, latent)
    cond = dc.conditioning("sd15", "full", batch=1)
    with torch.no_grad():
        started = time.perf_counter()
        d = model(x * 14.6, torch.tensor([14.6]), **cond)
        out[f"forward_{latent}x{latent}_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        model(x * 14.6, torch.tensor([14.6]), cond_sigma=torch.tensor([12.0]), **cond)
        out[f"forward_{latent}x{latent}_tau_s"] = round(time.perf_counter() - started, 1)
    out["finite"] = bool(torch.isfinite(d).all())
    out["peak_rss_gb"] = round(rss_gb(), 2)
    return out


if __name__ == "__main__":
    main()
