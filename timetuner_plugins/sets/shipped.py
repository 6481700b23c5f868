"""The shipped tuned sets: ``tuned_sets/index.yaml`` lists each file with its sha256."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import tuned_sets

from .tuned_set import TunedSet, TunedSetError

ROOT = Path(tuned_sets.__file__).resolve().parent
INDEX = ROOT / "index.yaml"


class NoShippedSet(LookupError):
    """No shipped set matches the request."""


@dataclass(frozen=True)
class Entry:
    file: str
    model: str
    sampler: str
    schedule: str
    steps: int
    nfe: int
    objective: str
    sha256: str
    metrics: dict[str, Any]

    @property
    def path(self) -> Path:
        return ROOT / self.file


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries() -> list[Entry]:
    """Every set the index lists (an absent index lists none)."""
    if not INDEX.is_file():
        return []
    try:
        raw = yaml.safe_load(INDEX.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TunedSetError(INDEX, f"is not valid YAML ({exc})", "Reinstall the package") from None
    return [Entry(**{**item, "metrics": item.get("metrics") or {}}) for item in raw.get("sets", [])]


def find(
    model: str, sampler: str, nfe: int | None = None, steps: int | None = None, schedule: str | None = None
) -> Entry:
    """The shipped set for model × sampler at ``nfe`` evaluations (or ``steps`` steps); without a
    ``schedule``, the one on the schedule chosen for that sampler (listed first)."""
    matches = [
        e
        for e in entries()
        if e.model == model
        and e.sampler == sampler
        and (nfe is None or e.nfe == nfe)
        and (steps is None or e.steps == steps)
        and (schedule is None or e.schedule == schedule)
    ]
    matches.sort(key=lambda e: not e.metrics.get("schedule_chosen", True))
    if not matches:
        have = sorted({f"{e.sampler}@{e.nfe}" for e in entries() if e.model == model})
        raise NoShippedSet(
            f"no shipped tuned set for {model} × {sampler} at "
            f"{f'NFE {nfe}' if nfe is not None else f'{steps} steps'}; shipped for {model}: "
            f"{', '.join(have) or 'none'}. Tune one with `timetuner tune`."
        )
    return matches[0]


def load(entry: Entry) -> TunedSet:
    """Load a shipped set after checking its sha256 against the index."""
    if not entry.path.is_file():
        raise TunedSetError(entry.path, "is listed in the index but missing", "Reinstall the package")
    digest = sha256_file(entry.path)
    if digest != entry.sha256:
        raise TunedSetError(
            entry.path,
            f"has sha256 {digest[:12]}… but the index records {entry.sha256[:12]}…",
            "The file was modified or damaged: reinstall the package",
        )
    return TunedSet.load(entry.path)


def write_index(items: list[Entry]) -> None:
    """Rewrite the index (used by the script that builds the shipped sets)."""
    from ..io import atomic_path

    body = {"format": 1, "sets": [{k: getattr(e, k) for k in Entry.__dataclass_fields__} for e in items]}
    with atomic_path(INDEX, overwrite=True) as tmp:
        tmp.write_text(
            "# Shipped tuned sets; regenerate with `python -m timetuner_plugins.experiments.build_sets`.\n"
            + yaml.safe_dump(body, sort_keys=False)
        )


TABLE_START, TABLE_END = "<!-- sets:start -->", "<!-- sets:end -->"


def _g(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"


def _tuned_with(entry: Entry) -> str:
    """'default' for a set tuned with today's model-agnostic default (pixels, selected by the objective, a teacher
    that checked its convergence), 'default, larger sizes' for one tuned by the same objective before the default's
    sizes shrank (no teacher check recorded), 'classifier' for one tuned in the digits classifier's features and
    selected by FD (the earlier default)."""
    from .tuned_set import TunedSet

    extra = TunedSet.load(entry.path).extra
    if extra.get("features", "pixel") != "pixel" or extra.get("selection", {}).get("metric") == "fd":
        return "classifier"
    return "default" if "teacher_check" in extra else "default, larger sizes"


def _changes(m: dict[str, Any]) -> str:
    """Which measure the set makes worse than the plain sampler (beyond 0.1 %), or that it is the identity."""
    if m.get("identity_fallback"):
        return "identity"
    worse = [
        name
        for name, key in (("FD", "fd"), ("traj", "traj_err"))
        if m.get(f"{key}_tuned") is not None and m[f"{key}_tuned"] > m[f"{key}_untuned"] * 1.001
    ]
    return " and ".join(worse) + " worse" if worse else ""


def markdown(items: list[Entry] | None = None) -> str:
    """The shipped sets as a Markdown table: FD and trajectory error, untuned → tuned, side by side, what each set
    makes worse, and which tuner made it."""
    lines = [
        "| model | sampler | schedule | NFE | FD untuned → tuned | FD 500-NFE ref | traj err untuned → tuned | "
        "worse / identity | tuned with |",
        "|---|---|---|---:|---|---:|---|---|---|",
    ]
    for e in items if items is not None else entries():
        m = e.metrics
        fd = f"{_g(m.get('fd_untuned'))} → {_g(m.get('fd_tuned'))}"
        traj = f"{_g(m.get('traj_err_untuned'))} → {_g(m.get('traj_err_tuned'))}"
        lines.append(
            f"| {e.model} | {e.sampler} | {e.schedule} | {e.nfe} | {fd} | {_g(m.get('fd_reference'))} | "
            f"{traj} | {_changes(m)} | {_tuned_with(e)} |"
        )
    return "\n".join(lines)


def update_table(path: Path) -> None:
    """Replace the text between ``TABLE_START`` and ``TABLE_END`` in ``path`` with :func:`markdown`."""
    text = path.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"{path} has no {TABLE_START} … {TABLE_END} section to replace")
    start, end = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
    from ..io import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text[:start] + "\n" + markdown() + "\n" + text[end:])
