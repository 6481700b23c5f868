"""Tuned-set files: safetensors with ``sigmas``, ``eval_sigmas``, ``tau`` (and, format 2, the D-ODE
parameters ``dode_lambda``; format 3, a τ function's coefficients ``tau_function``) and string metadata. A τ-only
set is written as format 1, so older readers keep reading it; a reader older than a file's format refuses it.

A set holds τ for one run (sampler × σ's); a function set (format 3) holds a τ function over a range of NFEs and
schedules (see :mod:`.tau_function`), and its tensors are the function on one representative run of that range.
:meth:`TunedSet.for_run` turns either into the set for a given run.

Loading never unpickles anything and validates every field; each problem raises
:class:`TunedSetError` naming the file, the problem and the fix.
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .. import __version__
from ..adapters.denoisers import SPACES
from ..io import atomic_path
from .tau import TauLookup
from .tau_function import BASIS, N_BASIS

FORMAT_VERSION = 3  # 2 adds the optional ``dode_lambda`` tensor, 3 ``tau_function``
TENSORS = ("sigmas", "eval_sigmas", "tau")
OPTIONAL_TENSORS = {"dode_lambda": 2, "tau_function": 3}  # name → the format version that introduced it
MAX_TAU_COEF = 100.0  # |θ| of a τ function; the basis is bounded, so the tanh saturates long before
MAX_DODE_LAMBDA = 10.0  # |λ|; the tuner bounds it to 1
MAX_FILE_BYTES = 16 * 2**20  # a tuned set is a few kB; anything this big is not one
MAX_HEADER_BYTES = 256 * 2**10
SIGMA_RTOL = 1e-4
MIN_RATIO, MAX_RATIO = 1e-3, 1e3  # τ/σ; the tuner bounds it to e^±1
REQUIRED = (
    "format_version",
    "model_id",
    "model_fingerprint",
    "sampler",
    "sampler_options",
    "schedule",
    "steps",
    "nfe",
    "objective",
    "mode",
    "iterations",
    "seed",
    "data_source",
    "library_version",
    "created",
)
JSON_FIELDS = ("sampler_options", "metrics_before", "metrics_after", "extra")
INT_FIELDS = ("format_version", "steps", "nfe", "iterations", "seed")


class TunedSetError(ValueError):
    """A tuned-set file that cannot be used: the message names the file, the problem and the fix."""

    def __init__(self, path: str | Path | None, problem: str, fix: str):
        self.path, self.problem, self.fix = (str(path) if path else None), problem, fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. {fix}")


class TunedSetMismatch(TunedSetError):
    """A valid tuned set used with a model, sampler or schedule it was not tuned for."""


@dataclass
class TunedSet:
    """τ for every network evaluation of one sampler × schedule × model run, with its provenance."""

    sigmas: torch.Tensor
    eval_sigmas: torch.Tensor
    tau: torch.Tensor
    model_id: str
    model_fingerprint: str
    sampler: str
    schedule: str
    objective: str
    mode: str = "-"
    iterations: int = 0
    seed: int = 0
    data_source: str = "teacher"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    metrics_before: dict[str, Any] = field(default_factory=dict)
    metrics_after: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    library_version: str = __version__
    created: str = ""
    format_version: int = FORMAT_VERSION
    path: Path | None = None
    dode_lambda: torch.Tensor | None = None
    tau_function: torch.Tensor | None = None  # θ of a function set (format 3); its settings in extra["tau_function"]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in TENSORS}
        for name in OPTIONAL_TENSORS:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @property
    def is_function(self) -> bool:
        """A τ function over a range of NFEs and schedules, not τ for one run."""
        return self.tau_function is not None

    @property
    def function_range(self) -> dict[str, Any]:
        """A function set's range: ``nfe`` [lowest, highest], ``schedules`` tuned on, and the runs it was tuned on."""
        return self.extra.get("tau_function", {})

    def function(self) -> Any:
        """A function set's :class:`~timetuner_plugins.sets.tau_function.TauFunction`."""
        from .tau_function import TauFunction

        if self.tau_function is None:
            raise TunedSetError(self.path, "holds τ for one run, not a τ function", "Use its lookup()")
        spec = self.function_range
        return TauFunction(tuple(spec["log_sigma_range"]), spec.get("tau_max"), self.tau_function)

    def for_run(
        self,
        model: Any,
        sigmas: torch.Tensor,
        *,
        schedule: str | None = None,
        sample_shape: tuple[int, ...] | None = None,
        force: bool = False,
        force_hint: str = "pass --force (force=True) to apply it anyway",
    ) -> "TunedSet":
        """This set for a run of its sampler on ``sigmas``: itself for a one-run set (the caller's :meth:`check`
        compares the run); for a function set, τ at each evaluation of that run. A run whose NFE is outside the
        function's range is refused (with ``force``: a warning); a schedule it was not tuned on is a warning."""
        if not self.is_function:
            return self
        from ..sampling.run import eval_plan, sampler_spec

        spec = sampler_spec(self.sampler)
        shape = tuple(sample_shape or getattr(model, "sample_shape", (1,)))
        plan = eval_plan(spec, sigmas.detach().float().cpu(), shape, self.sampler_options, model)
        lo, hi = self.function_range["nfe"]
        problems = []
        if not lo <= len(plan.eval_sigmas) <= hi:
            problems.append(
                f"is a τ function for NFE {lo}–{hi} but the run makes {len(plan.eval_sigmas)} network evaluations"
            )
        if problems and not force:
            raise TunedSetMismatch(
                self.path,
                "; ".join(problems),
                f"Use steps within its range, tune a function that covers them, or {force_hint}",
            )
        tuned_on = self.function_range.get("schedules", [])
        if schedule is not None and schedule not in tuned_on:
            problems.append(f"was tuned on the schedules {', '.join(tuned_on)}, not {schedule}")
        for problem in problems:
            warnings.warn(f"{self.path or 'tuned set'}: {problem} (applied anyway)", stacklevel=2)
        fn = self.function()
        with torch.no_grad():
            tau = fn.tau(fn.features(plan, sigmas), plan.eval_sigmas)
        return replace(
            self,
            sigmas=sigmas.detach().float().cpu(),
            eval_sigmas=plan.eval_sigmas,
            tau=tau,
            schedule=schedule or "custom",
            tau_function=None,
            extra={**self.extra, "from_function": str(self.path) if self.path else "in memory"},
        )

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def nfe(self) -> int:
        return len(self.tau)

    def lookup(self, rtol: float = SIGMA_RTOL) -> TauLookup:
        """τ per evaluation of the set's run (a function set: :meth:`for_run` first)."""
        if self.is_function:
            raise TunedSetError(
                self.path, "is a τ function, which has τ only for a given run", "Call for_run(model, sigmas) first"
            )
        return TauLookup(self.eval_sigmas, self.tau, rtol, self.dode_lambda)

    def metadata(self) -> dict[str, str]:
        meta: dict[str, Any] = {k: v for k, v in asdict(self).items() if k not in (*TENSORS, *OPTIONAL_TENSORS, "path")}
        meta.update(
            steps=self.steps,
            nfe=self.nfe,
            created=self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            format_version=max([1] + [OPTIONAL_TENSORS[k] for k in self.tensors() if k in OPTIONAL_TENSORS]),
        )
        return {k: json.dumps(v, sort_keys=True) if k in JSON_FIELDS else str(v) for k, v in meta.items()}

    def to_bytes(self) -> bytes:
        _validate_tensors(None, self.tensors())
        # copies: an identity set's τ may be the very tensor of its eval σ's, which safetensors refuses to save
        tensors = {
            name: t.detach().to("cpu", torch.float32, copy=True).contiguous() for name, t in self.tensors().items()
        }
        return save_safetensors(tensors, metadata=self.metadata())

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write atomically; an existing file is replaced only with ``overwrite``."""
        path = Path(path)
        data = self.to_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(data)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TunedSet":
        """Read and validate a tuned-set file."""
        path = Path(path)
        if not path.exists():
            raise TunedSetError(path, "no such file", "Check the path, or list shipped sets with `timetuner inspect`")
        if not path.is_file():
            raise TunedSetError(path, "is a directory, not a tuned-set file", "Pass the .safetensors file inside it")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise TunedSetError(
                path,
                f"is {size} bytes, far larger than any tuned set",
                "Check that this is a tuned-set file and not a model checkpoint",
            )
        return cls.from_bytes(path.read_bytes(), path)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | Path | None = None) -> "TunedSet":
        metadata = _read_header(data, path)
        try:
            tensors = load_safetensors(data)
        except Exception as exc:
            raise TunedSetError(
                path,
                f"is not a valid safetensors file ({exc})",
                "The file is corrupt or truncated: download or tune it again",
            ) from None
        _validate_tensors(path, tensors)
        meta = _parse_metadata(path, metadata)
        if meta["nfe"] != len(tensors["tau"]) or meta["steps"] != len(tensors["sigmas"]) - 1:
            raise TunedSetError(
                path,
                f"metadata says {meta['steps']} steps / {meta['nfe']} evaluations but the tensors "
                f"hold {len(tensors['sigmas']) - 1} / {len(tensors['tau'])}",
                "The file was edited or corrupted: tune it again",
            )
        for name, since in OPTIONAL_TENSORS.items():
            if name in tensors and meta["format_version"] < since:
                raise TunedSetError(
                    path,
                    f"holds {name!r}, which format {meta['format_version']} does not have",
                    "The file was edited or corrupted: tune it again",
                )
        meta.pop("steps")
        meta.pop("nfe")
        if "tau_function" in tensors:
            _validate_function(path, meta["extra"].get("tau_function"))
        return cls(
            **{k: tensors[k].float() for k in TENSORS},
            **meta,
            path=Path(path) if path else None,
            **{k: tensors[k].float() for k in OPTIONAL_TENSORS if k in tensors},
        )

    def check(
        self,
        *,
        model: Any = None,
        sampler: str | None = None,
        sigmas: torch.Tensor | None = None,
        nfe: int | None = None,
        force: bool = False,
        force_hint: str = "pass --force (force=True) to apply it anyway",
    ) -> list[str]:
        """Compare against a run; raise :class:`TunedSetMismatch` on any difference unless ``force``
        (then warn); ``force_hint`` says how the caller's user forces it. Returns the differences."""
        if self.is_function and (sigmas is not None or nfe is not None):
            raise TunedSetError(
                self.path, "is a τ function: a run's σ's are checked by for_run", "Call for_run(model, sigmas) first"
            )
        problems = []
        if model is not None:
            problems += self._space_problems(model)
        fingerprint = getattr(model, "fingerprint", None)
        if model is not None and fingerprint != self.model_fingerprint:
            problems.append(
                f"tuned for model {self.model_id!r} (fingerprint {self.model_fingerprint[:12]}…) but the "
                f"run's model is {getattr(model, 'model_id', '?')!r} ({str(fingerprint)[:12]}…)"
            )
        if sampler is not None and sampler != self.sampler:
            problems.append(f"tuned for sampler {self.sampler!r} but the run uses {sampler!r}")
        if sigmas is not None and not sigmas_match(self.sigmas, sigmas):
            problems.append(
                f"tuned on the {self.schedule} schedule with {self.steps} steps "
                f"{_short(self.sigmas)} but the run's σ's are {_short(sigmas)} ({len(sigmas) - 1} steps)"
            )
        if nfe is not None and nfe != self.nfe:
            problems.append(f"tuned for {self.nfe} network evaluations but the run makes {nfe}")
        if problems and not force:
            raise TunedSetMismatch(
                self.path, "; ".join(problems), f"Use a set tuned for this run (`timetuner tune ...`), or {force_hint}"
            )
        for problem in problems:
            warnings.warn(f"{self.path or 'tuned set'}: {problem} (applied anyway: force)", stacklevel=2)
        return problems

    def _space_problems(self, model: Any) -> list[str]:
        """A set for another σ space is refused outright (its σ's mean other noise levels there, so no force);
        another flow shift is a difference like any other."""
        recorded = self.extra.get("model") or {"space": "ve"}  # sets from before flow models are VE/VP
        space = getattr(model, "space", "ve")
        if recorded.get("space", "ve") != space:
            raise TunedSetMismatch(
                self.path,
                f"tuned for {SPACES.get(recorded.get('space'), recorded.get('space'))} "
                f"but the run's model is {SPACES.get(space, space)}",
                "A set only applies to models of its own parameterisation: tune one for this model",
            )
        shift = getattr(model, "shift", None)
        if (
            space == "flow"
            and shift is not None
            and "shift" in recorded
            and abs(float(recorded["shift"]) - float(shift)) > 1e-6 * abs(float(shift))
        ):
            return [f"tuned for flow shift {recorded['shift']:g} but the run's model has shift {float(shift):g}"]
        return []

    def summary(self) -> dict[str, Any]:
        meta = {k: (json.loads(v) if k in JSON_FIELDS else v) for k, v in self.metadata().items()}
        meta.update(
            sigmas=self.sigmas.tolist(),
            eval_sigmas=self.eval_sigmas.tolist(),
            tau=self.tau.tolist(),
            tau_over_sigma=(self.tau / self.eval_sigmas).tolist(),
            path=str(self.path) if self.path else None,
        )
        for name in OPTIONAL_TENSORS:
            if getattr(self, name) is not None:
                meta[name] = getattr(self, name).tolist()
        return meta


VERDICT_RTOL = 0.001  # a change smaller than 0.1 % counts as no change


def verdict(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """What a measured set does to FD and to trajectory error, in words ("improves FD and trajectory error",
    "improves FD, worsens trajectory error", …); None without measurements. A set that improves one and
    worsens the other says so."""

    def change(key: str) -> str | None:
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            return None
        if b < a * (1 - VERDICT_RTOL):
            return "improves"
        return "worsens" if b > a * (1 + VERDICT_RTOL) else "keeps"

    parts = [(change(k), name) for k, name in (("fd", "FD"), ("traj_err", "trajectory error"))]
    parts = [(c, name) for c, name in parts if c is not None]
    if not parts:
        return None
    if len({c for c, _ in parts}) == 1:
        return f"{parts[0][0]} " + " and ".join(name for _, name in parts)
    return ", ".join(f"{c} {name}" for c, name in parts)


def sigmas_match(a: torch.Tensor, b: torch.Tensor, rtol: float = SIGMA_RTOL) -> bool:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return a.shape == b.shape and bool(((a - b).abs() <= rtol * a.abs()).all())


def _short(sigmas: torch.Tensor) -> str:
    vals = [f"{v:.4g}" for v in sigmas.tolist()]
    return "[" + ", ".join(vals if len(vals) <= 6 else vals[:3] + ["…"] + vals[-2:]) + "]"


def _read_header(data: bytes, path: str | Path | None) -> dict[str, str]:
    if len(data) < 8:
        raise TunedSetError(
            path,
            f"is {len(data)} bytes long, too short for a safetensors file",
            "The file is truncated: download or tune it again",
        )
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or length > len(data) - 8:
        raise TunedSetError(
            path,
            f"declares a {length}-byte header in a {len(data)}-byte file",
            "The file is corrupt, truncated or not a tuned set: download or tune it again",
        )
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, ValueError) as exc:
        raise TunedSetError(path, f"has an unreadable header ({exc})", "The file is corrupt: tune it again") from None
    if not isinstance(header, dict):
        raise TunedSetError(path, "has a header that is not a JSON object", "The file is corrupt: tune it again")
    metadata = header.get("__metadata__")
    if (
        not isinstance(metadata, dict)
        or not all(isinstance(v, str) for v in metadata.values())
        or "format_version" not in metadata
    ):
        raise TunedSetError(
            path,
            "has no tuned-set metadata (it is a safetensors file, but not a tuned set)",
            "Pass a file written by `timetuner tune`",
        )
    return metadata


def _validate_tensors(path: str | Path | None, tensors: dict[str, torch.Tensor]) -> None:
    names = set(tensors)
    if not set(TENSORS) <= names <= set(TENSORS) | set(OPTIONAL_TENSORS):
        missing, unknown = sorted(set(TENSORS) - names), sorted(names - set(TENSORS) - set(OPTIONAL_TENSORS))
        detail = "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unexpected {unknown}"]))
        raise TunedSetError(
            path,
            f"has the wrong tensors ({detail})",
            f"A tuned set holds {list(TENSORS)} and optionally {list(OPTIONAL_TENSORS)}",
        )
    for name, t in tensors.items():
        if t.dtype not in (torch.float32, torch.float64):
            raise TunedSetError(path, f"tensor {name!r} has dtype {t.dtype}", "Tuned-set tensors are float32")
        if t.ndim != 1:
            raise TunedSetError(path, f"tensor {name!r} has shape {tuple(t.shape)}", "Tuned-set tensors are 1-D")
        if not bool(torch.isfinite(t).all()):
            raise TunedSetError(
                path,
                f"tensor {name!r} holds NaN or infinite values",
                "The tuning run diverged: tune again (a lower learning rate helps)",
            )
    sig, ev, tau = tensors["sigmas"], tensors["eval_sigmas"], tensors["tau"]
    if len(sig) < 2 or float(sig[-1]) != 0.0 or not bool((sig[:-1] > 0).all()) or not bool((sig[1:] < sig[:-1]).all()):
        raise TunedSetError(
            path,
            f"its σ schedule {_short(sig)} is not strictly decreasing from positive values to 0",
            "The file is corrupt: tune it again",
        )
    if len(ev) != len(tau) or len(tau) == 0:
        raise TunedSetError(path, f"has {len(ev)} evaluation σ's but {len(tau)} τ's", "The file is corrupt: tune again")
    if not bool((ev > 0).all()) or not bool((tau > 0).all()):
        raise TunedSetError(path, "has a non-positive σ or τ", "τ must be a positive noise level: tune it again")
    if float(ev.max()) > 1.5 * float(sig[0]) or float(ev.min()) < float(sig[-2]) * 0.5:
        raise TunedSetError(
            path,
            f"has evaluation σ's {_short(ev)} outside its schedule {_short(sig)}",
            "The file is corrupt: tune it again",
        )
    lam = tensors.get("dode_lambda")
    if lam is not None and (len(lam) != len(tau) or float(lam.abs().max()) > MAX_DODE_LAMBDA):
        raise TunedSetError(
            path,
            f"has {len(lam)} D-ODE λ's for {len(tau)} evaluations, or |λ| above {MAX_DODE_LAMBDA}",
            "No tuner writes such values: the file is corrupt or crafted",
        )
    coef = tensors.get("tau_function")
    if coef is not None and (len(coef) != N_BASIS or float(coef.abs().max()) > MAX_TAU_COEF):
        raise TunedSetError(
            path,
            f"has a τ function of {len(coef)} coefficients (a tuned one has {N_BASIS}), or one above {MAX_TAU_COEF}",
            "No tuner writes such values: the file is corrupt or crafted",
        )
    ratio = tau.double() / ev.double()
    if float(ratio.min()) < MIN_RATIO or float(ratio.max()) > MAX_RATIO:
        raise TunedSetError(
            path,
            f"has τ/σ between {float(ratio.min()):.3g} and {float(ratio.max()):.3g}, outside "
            f"[{MIN_RATIO}, {MAX_RATIO}]",
            "No tuner writes such values: the file is corrupt or crafted; do not use it",
        )


def _parse_metadata(path: str | Path | None, metadata: dict[str, str]) -> dict[str, Any]:
    version_text = metadata.get("format_version", "")
    try:
        version = int(version_text)
    except ValueError:
        raise TunedSetError(path, f"has format_version {version_text!r}", "The file is not a tuned set") from None
    if version > FORMAT_VERSION:
        writer = metadata.get("library_version", "a newer version")
        raise TunedSetError(
            path,
            f"uses tuned-set format {version}, newer than the {FORMAT_VERSION} this library "
            f"(timetuner {__version__}) reads",
            f"Upgrade to timetuner {writer} or later, which wrote it",
        )
    if version < 1:
        raise TunedSetError(path, f"has format_version {version}", "The file is not a tuned set")
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise TunedSetError(path, f"lacks metadata {missing}", "The file is incomplete: tune it again")
    meta: dict[str, Any] = {}
    allowed = set(REQUIRED) | set(JSON_FIELDS) | {"format_version"}
    for key, value in metadata.items():
        if key not in allowed:
            continue  # unknown keys from a same-version writer are ignored
        if key in INT_FIELDS:
            try:
                meta[key] = int(value)
            except ValueError:
                raise TunedSetError(
                    path, f"metadata {key}={value!r} is not an integer", "The file is corrupt: tune it again"
                ) from None
        elif key in JSON_FIELDS:
            try:
                parsed = json.loads(value)
            except ValueError:
                raise TunedSetError(
                    path, f"metadata {key} is not valid JSON", "The file is corrupt: tune it again"
                ) from None
            if not isinstance(parsed, dict):
                raise TunedSetError(path, f"metadata {key} is not a JSON object", "The file is corrupt: tune it again")
            meta[key] = parsed
        else:
            meta[key] = value
    for key in ("metrics_before", "metrics_after", "extra", "sampler_options"):
        meta.setdefault(key, {})
    fp = meta["model_fingerprint"]
    if len(fp) != 64 or any(ch not in "0123456789abcdef" for ch in fp):
        raise TunedSetError(
            path, f"has model_fingerprint {fp[:80]!r}, not a sha256 hex digest", "The file is corrupt: tune it again"
        )
    if not meta["sampler"].strip():
        raise TunedSetError(path, "names no sampler", "The file is corrupt: tune it again")
    return meta


def _validate_function(path: str | Path | None, spec: Any) -> None:
    """A function set's settings (metadata extra["tau_function"]): the basis this library evaluates, a log-σ range,
    an NFE range and the schedules it was tuned on."""
    fix = "The file is corrupt, or written by a newer timetuner: tune it again or upgrade"
    if not isinstance(spec, dict):
        raise TunedSetError(path, "holds a τ function but no settings for it (extra.tau_function)", fix)
    if spec.get("basis") != BASIS:
        raise TunedSetError(path, f"holds a τ function on the basis {spec.get('basis')!r}, not {BASIS!r}", fix)
    rng, nfe = spec.get("log_sigma_range"), spec.get("nfe")
    ok_range = (
        isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, (int, float)) for v in rng) and rng[0] < rng[1]
    )
    ok_nfe = isinstance(nfe, list) and len(nfe) == 2 and all(isinstance(v, int) for v in nfe) and 1 <= nfe[0] <= nfe[1]
    tau_max = spec.get("tau_max")
    if not ok_range or not ok_nfe or not (tau_max is None or (isinstance(tau_max, (int, float)) and tau_max > 0)):
        raise TunedSetError(
            path, f"has unreadable τ-function settings (log_sigma_range {rng!r}, nfe {nfe!r}, tau_max {tau_max!r})", fix
        )
    if not isinstance(spec.get("schedules"), list):
        raise TunedSetError(path, "names no schedules its τ function was tuned on", fix)
