"""Errors the registry raises."""

from __future__ import annotations

import difflib
from typing import Iterable


class UnknownNameError(LookupError):
    """A sampler, model or schedule name that nothing registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], notes: Iterable[str] = ()):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = ", ".join(known) if known else "(none registered)"
        why = "".join(f" Note: {note}" for note in notes)
        super().__init__(f"unknown {kind} {name!r}.{why}{hint} Registered {kind}s: {listing}")
        self.kind, self.name, self.close_matches, self.known, self.notes = kind, name, close, known, list(notes)

    def __str__(self) -> str:  # LookupError would quote the message
        return self.args[0]


class SamplerOptionError(ValueError):
    """An option the sampler's function does not take."""

    def __init__(self, sampler: str, unknown: Iterable[str], accepted: Iterable[str]):
        unknown, accepted = sorted(unknown), sorted(accepted)
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no options"
        super().__init__(f"sampler {sampler!r} has no option {', '.join(map(repr, unknown))}; {takes}")
        self.sampler, self.unknown, self.accepted = sampler, unknown, accepted


class SamplerSpaceError(ValueError):
    """A sampler whose noise steps assume another state space than the model's (VE noise on a flow model)."""

    def __init__(self, sampler: str, space: str, spaces: Iterable[str]):
        super().__init__(
            f"sampler {sampler!r} adds noise for a {' or '.join(spaces)} state and the model is a {space} "
            f"model (x = (1 − σ)·x₀ + σ·ε for flow): its samples would be wrong. Use a deterministic "
            f"sampler, or 'ddpm', whose ancestral steps follow the model's space"
        )
        self.sampler, self.space, self.spaces = sampler, space, tuple(spaces)
