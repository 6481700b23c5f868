"""Which tuned-set files the nodes may read and write, and nothing outside them."""

from __future__ import annotations

import re
from pathlib import Path

from timetuner_plugins.sets import shipped

SHIPPED_PREFIX = "shipped/"
FOLDER = "timetuner"  # ComfyUI models/timetuner
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,120}$")


class UnsafePath(ValueError):
    """A file name that would leave the allowed folders."""


def choices(user_folders: list[Path]) -> list[str]:
    """Names the loader offers: shipped sets as ``shipped/<model>/<file>``, then users' own files."""
    names = [SHIPPED_PREFIX + e.file for e in shipped.entries()]
    for folder in user_folders:
        if folder.is_dir():
            names += sorted(
                str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*.safetensors") if p.is_file()
            )
    return names


def _inside(root: Path, relative: str) -> Path:
    if not relative or "\x00" in relative:
        raise UnsafePath("empty or invalid file name")
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or relative.startswith(("/", "\\")):
        raise UnsafePath(f"{relative!r} is absolute or contains '..'; pick a file from the list")
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UnsafePath(f"{relative!r} resolves outside {root}; pick a file from the list")
    return resolved


def resolve(name: str, user_folders: list[Path]) -> tuple[Path, shipped.Entry | None]:
    """The file behind a loader choice (and its index entry for shipped sets)."""
    if name.startswith(SHIPPED_PREFIX):
        relative = name[len(SHIPPED_PREFIX) :]
        _inside(shipped.ROOT, relative)
        entry = next((e for e in shipped.entries() if e.file == relative), None)
        if entry is None:
            raise FileNotFoundError(f"{name!r} is not a shipped tuned set; pick one from the list")
        return entry.path, entry
    for folder in user_folders:
        path = _inside(folder, name)
        if path.is_file():
            return path, None
    raise FileNotFoundError(f"no tuned set {name!r} in {', '.join(map(str, user_folders)) or 'models/timetuner'}")


def output_path(folder: Path, filename: str) -> Path:
    """Where the Tune node writes ``filename`` (a bare name; .safetensors added)."""
    stem = filename[: -len(".safetensors")] if filename.endswith(".safetensors") else filename
    if not _SAFE_NAME.match(stem) or stem in (".", ".."):
        raise UnsafePath(f"file name {filename!r}: use letters, digits, '.', '_', '-' and spaces, no folders")
    return folder / f"{stem}.safetensors"
