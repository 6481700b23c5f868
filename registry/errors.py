"""Errors the registry raises."""

from __future__ import annotations

import difflib
from typing import Iterable


class UnknownNameError(LookupError):
    """A sampler, model or schedule name that nothing registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}.{hint} Registered {kind}s: {listing}")
        self.kind, self.name, self.close_matches, self.known = kind, name, close, known

    def __str__(self) -> str:  # LookupError would quote the message
        return self.args[0]
