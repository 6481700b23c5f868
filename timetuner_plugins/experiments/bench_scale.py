"""``timetuner bench-scale``: peak memory and seconds per tuning iteration of real architectures, against NFE,
batch, resolution and recompute.

Each point runs in a fresh process, so its peak memory is its own: the network is built from a published
config with random weights (diffusers' classes; weights do not change memory or time), wrapped with
classifier-free guidance, its teacher computed, and then ``iters`` tuning iterations are timed. Memory is the
peak during those iterations above what the process held before them (weights, teacher, inputs): on CPU the
resident set's high-water mark (VmHWM, reset through /proc/self/clear_refs), on CUDA the allocator's peak.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

MODELS = {  # name: (diffusers_configs name, size, block widths or None for the published ones)
    "sd15": ("sd15", "full", None),
    "sd15-narrow": ("sd15", "full", [64, 128, 256, 256]),  # SD1.5's layout at a fifth of its widths
}


@dataclass(frozen=True)
class Point:
    """One measurement: ``model`` at a ``latent`` × ``latent`` latent, ``nfe`` DDIM evaluations, ``batch``
    samples per iteration in micro-batches of ``micro_batch``, CFG ``guidance`` (two network rows per sample)."""

    model: str = "sd15-narrow"
    nfe: int = 8
    batch: int = 2
    micro_batch: int | None = None
    latent: int = 32
    recompute: bool = True
    guidance: float = 7.5
    dtype: str = "float32"
    iters: int = 2
    device: str = "cpu"


@dataclass
class Result:
    point: Point
    parameters: int
    peak_gb: float
    seconds_per_iter: float
    baseline_gb: float
    extra: dict[str, Any] = field(default_factory=dict)


def _hwm_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 2**20


def _rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 2**20


def allocator() -> str:
    """The C allocator behind this process's CPU tensors: jemalloc or tcmalloc when preloaded, else glibc's."""
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").is_file() else ""
    return next((name for name in ("jemalloc", "tcmalloc") if f"lib{name}" in maps), "glibc")


def _reset_peak(device: torch.device) -> float:
    """Reset the peak and return the memory held now (GB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**30
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_gb()


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    return _hwm_gb()


def build(point: Point) -> Any:
    """The point's model as a tunable denoiser with CFG over random text embeddings."""
    from ..adapters import diffusers_configs as dc
    from ..adapters.denoisers import DTYPES
    from ..adapters.diffusers import DiffusersCFGDenoiser, DiffusersVPDenoiser

    name, size, widths = MODELS[point.model]
    config = dc.config(name, size)
    if widths is not None:
        config["block_out_channels"] = widths
    device = torch.device(point.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.device(device):
            net = dc.model_class(name)(**config)
    if point.dtype != "float32":
        net = net.to(DTYPES[point.dtype])
    net = net.eval().requires_grad_(False)
    inner = DiffusersVPDenoiser(
        net, dc.SCHEDULERS[name], sample_shape=(4, point.latent, point.latent), model_id=point.model
    )
    cond = {k: v.to(device) for k, v in dc.conditioning(name, size, batch=1, seed=1).items()}
    negative = {"encoder_hidden_states": torch.zeros_like(cond["encoder_hidden_states"])}
    return DiffusersCFGDenoiser(inner, point.guidance, cond=cond, negative=negative)


def measure(point: Point) -> Result:
    """Measure one point in this process (see the module docstring)."""
    from ..adapters.denoisers import network_parameters
    from ..sampling.run import make_sigmas
    from ..tuning.tuner import TuneConfig, Tuner

    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(point.device)
    model = build(point)
    sigmas = make_sigmas(model, "karras", point.nfe)
    config = TuneConfig(
        iters=point.iters,
        batch=point.batch,
        pool=point.batch,
        val_size=2,
        select=False,
        teacher_substeps=1,
        features="pixel",
        micro_batch=point.micro_batch,
        recompute="on" if point.recompute else "off",
        show_progress=False,
        checkpoint_every=10**6,
    )
    tuner = Tuner(model, "ddim", sigmas, "karras", config)
    started = time.perf_counter()
    tuner.teacher()
    teacher_seconds = time.perf_counter() - started
    baseline = _reset_peak(device)
    started = time.perf_counter()
    tuner.tune()
    seconds = (time.perf_counter() - started) / point.iters
    peak = _peak(device)
    return Result(
        point,
        network_parameters(model),
        round(peak - baseline, 3),
        round(seconds, 2),
        round(baseline, 3),
        {
            "teacher_seconds": round(teacher_seconds, 1),
            "threads": torch.get_num_threads(),
            "allocator": allocator() if device.type == "cpu" else "torch-cuda",
        },
    )


def preload(allocator: str) -> dict[str, str]:
    """The environment that makes a point's process use ``allocator``: "system" (the C library's), "jemalloc"
    (found by the dynamic linker's name) or a path to an allocator's shared library."""
    if allocator == "system":
        return {}
    if allocator == "jemalloc":
        import ctypes.util

        found = ctypes.util.find_library("jemalloc")
        if found is None:
            raise ValueError(
                "jemalloc is not installed (Debian/Ubuntu: apt install libjemalloc2); or give its path, "
                "e.g. --allocator /usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
            )
        return {"LD_PRELOAD": found}
    if not Path(allocator).is_file():
        raise ValueError(f"--allocator {allocator}: no such file; give 'system', 'jemalloc' or a library's path")
    return {"LD_PRELOAD": str(Path(allocator).resolve())}


def run(
    points: list[Point],
    out: Path,
    log: Callable[[str], None] = print,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
) -> list[dict]:
    """Measure each point in a fresh process (with ``env`` added to its environment, e.g. :func:`preload`'s); write
    ``results.json`` and ``results.md`` after each."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else []
    done = {json.dumps(r["point"], sort_keys=True) for r in results}
    for point in points:
        key = json.dumps(asdict(point), sort_keys=True)
        if key in done:
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "timetuner_plugins.experiments.bench_scale", key],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        if proc.returncode != 0:
            row = {"point": asdict(point), "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(row)
        log(_line(row))
        path.write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(markdown(results) + "\n")
    return results


def _line(row: dict) -> str:
    p = row["point"]
    head = (
        f"{p['model']:<13} NFE {p['nfe']:>2} batch {p['batch']}/{p['micro_batch'] or p['batch']} latent "
        f"{p['latent']:>3} recompute {'on ' if p['recompute'] else 'off'} {p['dtype']} "
        f"{row.get('extra', {}).get('allocator', '')}: "
    )
    if "error" in row:
        return head + "error: " + row["error"]
    return (
        head + f"peak {row['peak_gb']:.2f} GB above {row['baseline_gb']:.2f} GB, {row['seconds_per_iter']:.1f} s/iter"
    )


def markdown(results: list[dict]) -> str:
    lines = [
        "| model | NFE | batch (micro) | latent | recompute | dtype | allocator | peak above baseline | s / iteration |",
        "|---|---:|---|---:|---|---|---|---:|---:|",
    ]
    for row in results:
        p = row["point"]
        cells = (
            f"| {p['model']} | {p['nfe']} | {p['batch']} ({p['micro_batch'] or p['batch']}) | {p['latent']}² | "
            f"{'on' if p['recompute'] else 'off'} | {p['dtype']} | {row.get('extra', {}).get('allocator', 'glibc')} | "
        )
        if "error" in row:
            lines.append(cells + f"error: {row['error'][:60]} | |")
        else:
            lines.append(cells + f"{row['peak_gb']:.2f} GB | {row['seconds_per_iter']:.1f} |")
    return "\n".join(lines)


def curve_points(model: str = "sd15-narrow", device: str = "cpu") -> list[Point]:
    """The curves: NFE 4, 8, 16 with and without recompute; then batch and resolution at NFE 8."""
    points = [Point(model, nfe, recompute=r, device=device) for nfe in (4, 8, 16) for r in (False, True)]
    points += [Point(model, 8, batch=4, recompute=r, device=device) for r in (False, True)]
    points += [Point(model, 8, batch=4, micro_batch=1, recompute=True, device=device)]
    points += [Point(model, 8, latent=48, recompute=r, device=device) for r in (False, True)]
    return points


def plot(results: list[dict], path: Path) -> Path:
    """Peak memory and seconds per iteration against NFE, with and without recompute (batch 2, latent 32)."""
    from . import plots  # noqa: F401  (headless backend)
    import matplotlib.pyplot as plt

    fig, (mem, sec) = plt.subplots(1, 2, figsize=(9, 3.6))
    for recompute in (False, True):
        rows = sorted(
            (
                r
                for r in results
                if "error" not in r
                and r["point"]["recompute"] == recompute
                and r["point"]["batch"] == 2
                and r["point"]["latent"] == 32
                and not r["point"]["micro_batch"]
                and r["point"]["model"] == "sd15-narrow"
            ),
            key=lambda r: r["point"]["nfe"],
        )
        if not rows:
            continue
        nfes = [r["point"]["nfe"] for r in rows]
        label = "recompute" if recompute else "store activations"
        mem.plot(nfes, [r["peak_gb"] for r in rows], marker="o", label=label)
        sec.plot(nfes, [r["seconds_per_iter"] for r in rows], marker="o", label=label)
    mem.set(xlabel="NFE", ylabel="peak memory above baseline (GB)", title="memory per tuning iteration")
    sec.set(xlabel="NFE", ylabel="seconds per iteration", title="time per tuning iteration")
    for ax in (mem, sec):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xticks([4, 8, 16])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


class _Tracker:
    """torch's MemTracker without gradient hooks on the (frozen) weights: tuning never computes their gradients."""

    def __new__(cls):
        from torch.distributed._tools.mem_tracker import MemTracker

        class Frozen(MemTracker):
            def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
                return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

        return Frozen()


def estimate(
    name: str,
    latent: int,
    rows: int,
    dtype: str = "bfloat16",
    widths: list[int] | None = None,
    size: str = "full",
    fake: bool = True,
) -> dict[str, float]:
    """One network evaluation of the published ``name`` config at a ``latent`` × ``latent`` latent with ``rows`` rows
    (CFG doubles a batch), traced on fake tensors (nothing is allocated, so SDXL and Flux can be counted on a CPU;
    ``fake=False`` runs it for real, which is how the tests check the count): the weights, the activations a forward
    saves for the backward (what storing costs per evaluation), and the peak of one forward + backward (what
    recompute costs, once). GB, unrounded."""
    from contextlib import nullcontext

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import _MemRefType as Ref

    from ..adapters import diffusers_configs as dc
    from ..adapters.denoisers import DTYPES

    kind = dc.CLASSES[name]
    half = DTYPES[dtype]
    with FakeTensorMode() if fake else nullcontext():
        config = dc.config(name, size)
        if widths is not None:
            config["block_out_channels"] = widths
        previous = torch.get_default_dtype()
        torch.set_default_dtype(half)  # built in the dtype (fake tensors cannot be cast afterwards)
        try:
            net = dc.model_class(name)(**config).requires_grad_(False)
        finally:
            torch.set_default_dtype(previous)
        channels = dc.LATENT[(name, size)][0]
        cond = dc.conditioning(name, size, batch=rows, latent=(channels, latent, latent))
        cond = {
            k: v.to(half) if v.is_floating_point() and k not in ("txt_ids", "img_ids") else v for k, v in cond.items()
        }
        transformer = kind in ("FluxTransformer2DModel", "SD3Transformer2DModel")
        t = torch.full((rows,), 0.5 if kind == "FluxTransformer2DModel" else 500.0)
        shape = (
            (rows, (latent // 2) ** 2, channels * 4)
            if kind == "FluxTransformer2DModel"
            else (rows, channels, latent, latent)
        )
        x = torch.randn(shape, dtype=half, requires_grad=True)  # τ's gradient reaches the network through x and t
        kwargs = dict(cond)
        if name == "sdxl":
            kwargs = {
                "encoder_hidden_states": cond["encoder_hidden_states"],
                "added_cond_kwargs": {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]},
            }
        tracker = _Tracker()
        with tracker:
            out = (
                net(hidden_states=x, timestep=t, return_dict=False, **kwargs)[0]
                if transformer
                else net(x, t, return_dict=False, **kwargs)[0]
            )
            saved = tracker.get_tracker_snapshot("current")
            out.float().square().sum().backward()
        peak = tracker.get_tracker_snapshot("peak")
    device = torch.device("cpu")

    def gb(snap: dict, key: Any) -> float:
        return snap[device].get(key, 0) / 2**30

    weights = gb(saved, Ref.PARAM) + gb(saved, Ref.BUFFER)
    return {
        "weights_gb": weights,
        "saved_per_evaluation_gb": gb(saved, Ref.ACT) + gb(saved, Ref.TEMP),
        "forward_backward_peak_gb": gb(peak, "Total") - weights,
    }


ESTIMATES = (  # (model, latent, CFG rows, dtype): each at its default image size, as ComfyUI loads it
    ("sd15", 64, 2, "float16"),
    ("sdxl", 128, 2, "float16"),
    ("sd3", 128, 2, "float16"),
    ("flux", 128, 1, "bfloat16"),
)


def projected(row: dict[str, float], nfe: int) -> dict[str, float]:
    """A tuning iteration's peak for one sample at ``nfe`` evaluations from :func:`estimate`'s counts (GB): storing
    keeps every evaluation's saved activations; recompute keeps one forward + backward (the K states and τ are
    kilobytes to megabytes beside it)."""
    return {
        "store_gb": round(row["weights_gb"] + nfe * row["saved_per_evaluation_gb"], 1),
        "recompute_gb": round(row["weights_gb"] + row["forward_backward_peak_gb"], 1),
    }


def estimates(log: Callable[[str], None] = print, nfes: tuple[int, ...] = (4, 8, 16)) -> list[dict]:
    """:func:`estimate` for each of :data:`ESTIMATES`, with the projected peaks at ``nfes``."""
    rows = []
    for name, latent, n, dtype in ESTIMATES:
        counts = {k: round(v, 3) for k, v in estimate(name, latent, n, dtype).items()}
        row = {
            "model": name,
            "latent": latent,
            "rows": n,
            "dtype": dtype,
            **counts,
            "projected": {str(k): projected(counts, k) for k in nfes},
        }
        log(
            f"{name:<5} {latent}² latent, {n} row(s), {dtype}: weights {counts['weights_gb']:.1f} GB, saved per "
            f"evaluation {counts['saved_per_evaluation_gb']:.2f} GB, forward+backward peak "
            f"{counts['forward_backward_peak_gb']:.2f} GB"
        )
        rows.append(row)
    return rows


def estimates_markdown(rows: list[dict]) -> str:
    nfes = list(rows[0]["projected"]) if rows else []
    lines = [
        "| model | latent | rows | dtype | weights | saved / evaluation | fwd+bwd peak | "
        + " | ".join(f"NFE {k}: store / recompute" for k in nfes)
        + " |",
        "|---|---:|---:|---|---:|---:|---:|" + "---:|" * len(nfes),
    ]
    for r in rows:
        cells = " | ".join(
            f"{r['projected'][k]['store_gb']:.1f} / {r['projected'][k]['recompute_gb']:.1f} GB" for k in nfes
        )
        lines.append(
            f"| {r['model']} | {r['latent']}² | {r['rows']} | {r['dtype']} | {r['weights_gb']:.2f} GB | "
            f"{r['saved_per_evaluation_gb']:.2f} GB | {r['forward_backward_peak_gb']:.2f} GB | {cells} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    result = measure(Point(**json.loads(sys.argv[1])))
    print(json.dumps({**asdict(result), "point": asdict(result.point)}))
