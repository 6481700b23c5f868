"""Files of BDIA states and the inversion behind ``timetuner invert`` (Zhang et al., ECCV 2024).

A states file is ``.safetensors`` (tensors + string metadata) or ``.pt`` (a dict of tensors with a
``metadata`` dict of strings, read with ``weights_only=True``; a bare tensor is a ``sample``):

- ``sample``: the final states, (batch, *sample_shape);
- ``previous`` (optional): the state one step before each sample, which exact inversion needs; without
  it the state is estimated by DDIM-inverting the last step (:func:`~timetuner_plugins.sampling.bdia.previous_state`);
- ``noise`` (optional): the standard-normal noise the samples came from, to measure a round trip;
- metadata ``model``, ``sampler``, ``schedule``, ``steps``, ``options`` (JSON) of the run that made them.

An inversion writes the same format with ``noise`` (standard-normal scale, x_0 / σ_0), ``next`` (x_1, the
state after the first step) and the pair it inverted. BDIA's state is a pair at both ends: noise alone
regenerates a pair a BDIA run made (there x_1 is the plain first step from x_0); any other pair, such as
a real image with an estimated previous state, is regenerated exactly from (x_0, x_1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .bdia import bdia_invert, bdia_sample, previous_state
from ..io import atomic_path

FORMAT = "timetuner-bdia-states-1"
SAMPLERS = ("bdia_ddim", "bdia_edm")


class StatesFileError(ValueError):
    """A states file that cannot be read or is missing what the command needs."""


def read_states(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
        elif path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if torch.is_tensor(obj):
                obj = {"sample": obj}
            if not isinstance(obj, dict):
                raise StatesFileError(
                    f"{path}: a .pt states file holds a tensor or a dict of tensors, not {type(obj).__name__}"
                )
            meta = {str(k): str(v) for k, v in dict(obj.pop("metadata", {}) or {}).items()}
            tensors = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        else:
            raise StatesFileError(f"{path}: use a .safetensors or .pt file")
    except StatesFileError:
        raise
    except Exception as exc:  # a corrupt or foreign file: one clear line
        raise StatesFileError(f"{path}: cannot read it as a states file ({type(exc).__name__}: {exc})") from None
    if "sample" not in tensors:
        raise StatesFileError(
            f"{path}: no 'sample' tensor (found: {', '.join(sorted(tensors)) or 'none'}); "
            f"write the samples under the name 'sample'"
        )
    for name in ("previous", "noise"):
        if name in tensors and tensors[name].shape != tensors["sample"].shape:
            raise StatesFileError(
                f"{path}: '{name}' has shape {tuple(tensors[name].shape)} but 'sample' has "
                f"{tuple(tensors['sample'].shape)}"
            )
    return tensors, meta


def write_states(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], overwrite: bool = False
) -> Path:
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt"):
        raise StatesFileError(f"{path}: use a .safetensors or .pt file")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": FORMAT, **{k: str(v) for k, v in meta.items()}}
    with atomic_path(path, overwrite=overwrite) as tmp:
        if path.suffix == ".safetensors":
            save_file(tensors, str(tmp), metadata=meta)
        else:
            torch.save({**tensors, "metadata": meta}, tmp)
    return path


def run_meta(model_name: str, sampler: str, schedule: str, steps: int, options: dict[str, Any]) -> dict[str, str]:
    return {
        "model": model_name,
        "sampler": sampler,
        "schedule": schedule,
        "steps": str(steps),
        "options": json.dumps(options, sort_keys=True),
    }


def generate(
    model: Any, sampler: str, sigmas: torch.Tensor, noise: torch.Tensor, options: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """BDIA samples from standard-normal ``noise`` with the state before each."""
    with torch.no_grad():
        sample, previous = bdia_sample(model, noise * sigmas[0].to(noise), sigmas.to(noise.device), sampler, **options)
    return {"sample": sample, "previous": previous, "noise": noise}


def invert(
    model: Any,
    sampler: str,
    sigmas: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    options: dict[str, Any],
    previous_iters: int = 3,
    check: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The noise of ``tensors['sample']`` and its ``previous`` state (estimated if absent), with ``next``,
    the state after the first step, which together with the noise regenerates any pair exactly. With
    ``check``, the round trip's max abs errors: from (noise, next) against the given pair, from the noise
    alone (exact only for pairs a BDIA run made), and against the file's own ``noise`` when it has one."""
    sigmas = sigmas.to(tensors["sample"].device)
    report: dict[str, Any] = {
        "sampler": sampler,
        "steps": len(sigmas) - 1,
        "options": options,
        "dtype": str(tensors["sample"].dtype).removeprefix("torch."),
    }
    with torch.no_grad():
        sample = tensors["sample"]
        previous = tensors.get("previous")
        if previous is None:
            previous = previous_state(model, sample, sigmas, previous_iters)
            report["previous"] = f"estimated: DDIM inversion of the last step, {previous_iters} fixed-point iterations"
        else:
            report["previous"] = "from the file"
        x0, x1 = bdia_invert(model, sample, previous, sigmas, sampler, return_next=True, **options)
        noise = x0 / sigmas[0]
        out = {"noise": noise, "next": x1, "sample": sample, "previous": previous}
        if check:
            again, again_previous = bdia_sample(model, x0, sigmas, sampler, x_next=x1, **options)
            alone, _ = bdia_sample(model, x0, sigmas, sampler, **options)
            report["round_trip_sample_max_abs"] = float((again - sample).abs().max())
            report["round_trip_previous_max_abs"] = float((again_previous - previous).abs().max())
            report["noise_alone_sample_max_abs"] = float((alone - sample).abs().max())
            report["sample_max_abs"] = float(sample.abs().max())
            if "noise" in tensors:
                report["noise_max_abs_error"] = float((noise - tensors["noise"].to(noise)).abs().max())
    return out, report
