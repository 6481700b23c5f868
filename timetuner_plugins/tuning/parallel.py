"""How a tuning batch is split: over processes (torch.distributed, data-parallel) and into micro-batches.

Each process runs its contiguous share of every batch, in micro-batches; the pieces are joined with
``all_gather`` wherever the objective needs the whole batch (the energy distance compares every pair of
samples), and each process back-propagates the whole-batch loss through its own rows only, so the summed
(``all_reduce``) gradient equals the one-process, one-batch gradient up to float rounding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


class ShardError(ValueError):
    """A batch that cannot be split as asked, or ranks that disagree."""


@dataclass(frozen=True)
class Shards:
    """``micro_batch`` rows at a time (None: the whole share at once), on ``world`` processes of which this is
    ``rank``."""

    micro_batch: int | None = None
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, micro_batch: int | None = None) -> "Shards":
        """This process's place in the initialised torch.distributed group (one process without one)."""
        if dist.is_available() and dist.is_initialized():
            return cls(micro_batch, dist.get_rank(), dist.get_world_size())
        return cls(micro_batch)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def trivial(self, n: int) -> bool:
        """One process and one micro-batch for ``n`` rows: the plain single pass applies."""
        return self.world == 1 and (self.micro_batch is None or self.micro_batch >= n)

    def check(self, n: int, what: str = "batch") -> None:
        if n % self.world:
            raise ShardError(
                f"{what} {n} does not split evenly over {self.world} processes; use a multiple of {self.world}"
            )

    def own(self, n: int) -> slice:
        """This process's rows of an ``n``-row batch."""
        self.check(n)
        share = n // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def parts(self, n: int) -> list[slice]:
        """This process's rows of an ``n``-row batch, in micro-batches."""
        own = self.own(n)
        step = self.micro_batch or (own.stop - own.start)
        return [slice(a, min(a + step, own.stop)) for a in range(own.start, own.stop, step)]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every process's rows (this one's are ``local``), in rank order."""
        if not self.distributed:
            return local
        pieces = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(pieces, local.contiguous())
        return torch.cat(pieces)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over processes, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def agree(self, value: str, what: str) -> None:
        """Raise :class:`ShardError` unless every process has the same ``value`` (a fingerprint)."""
        if not self.distributed:
            return
        values: list[str | None] = [None] * self.world
        dist.all_gather_object(values, value)
        if len(set(values)) > 1:
            differing = [r for r, v in enumerate(values) if v != values[0]]
            raise ShardError(
                f"the processes disagree on the {what} (ranks {differing} differ from rank 0): start "
                f"every rank with the same command, model files and settings"
            )

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def init_from_env(device_type: str) -> Shards | None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1): gloo on CPU, NCCL on CUDA; else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Shards.current()


def concat(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))
