"""Atomic file writes: a temporary file in the target's folder, fsync, then rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it becomes ``path`` in one step.

    Without ``overwrite`` an existing ``path`` is never replaced, also when two
    writers race (the loser gets ``FileExistsError``). On any error the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: no clobbering
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


class OutputPathError(ValueError):
    """An output path that cannot be written, found before any work starts."""


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(".")


def check_output_file(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Fail now, not after the work, if ``path`` cannot be written: its folder must exist and be writable,
    and an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give {flag} a file name such as {path / 'out.safetensors'}")
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {path}: the folder {folder} does not exist; create it "
            f"(mkdir -p {folder}) or choose another {flag}"
        )
    if not os.access(folder, os.W_OK):
        raise OutputPathError(f"cannot write {path}: the folder {folder} is not writable; choose another {flag}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it or {flag} to choose another file")
    return path


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail now, not after the work, if the folder ``path`` cannot be created or written."""
    path = Path(path)
    existing = _nearest_existing(path)
    if existing == path and not path.is_dir():
        raise OutputPathError(f"{path} is a file, not a folder; choose another {flag}")
    if existing != path and not existing.is_dir():
        raise OutputPathError(f"cannot create {path}: {existing} is a file; choose another {flag}")
    if not os.access(existing, os.W_OK):
        raise OutputPathError(f"cannot write into {existing}: it is not writable; choose another {flag}")
    return path
