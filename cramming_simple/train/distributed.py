"""torch.distributed for pretraining: process groups, and the host-side agreement on time and stopping.

Under torchrun (WORLD_SIZE > 1) ranks use NCCL on GPUs and gloo on CPUs. The per-microbatch agreement runs
on a gloo group over CPU tensors, so it never waits for the GPU queue to drain: every rank gets the same
elapsed time (the slowest rank's) and the same stop decision, hence the same schedules and the same last step.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import EXIT_FAILED, UserError


class RankFailed(UserError):
    """Another rank failed (e.g. rank 0 found the disk full); this one leaves quietly with the same exit code."""

    quiet = True  # the failing rank prints the message

    def __init__(self, exit_code: int):
        super().__init__(f"another rank failed (exit code {exit_code}); its output says why")
        self.exit_code = exit_code


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    group: Any = None  # gloo group for host-side votes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def vote(self, elapsed: float, step_s: float, *flags: bool) -> tuple[float, float, list[bool]]:
        """(max elapsed over ranks, max seconds per step over ranks, each flag OR-ed over ranks): one all-reduce.
        Every decision taken from these is the same on every rank."""
        if self.world == 1:
            return elapsed, step_s, list(flags)
        t = torch.tensor([elapsed, step_s, *map(float, flags)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return float(t[0]), float(t[1]), [bool(v) for v in t[2:]]

    def max(self, value: float) -> float:
        """The largest `value` over ranks (host side, e.g. an error's exit code that only rank 0 knows)."""
        return self.vote(value, 0.0)[0]

    def fail_together(self, error: Exception | None) -> None:
        """Call on every rank after work that only some ranks did: if any failed, all raise (the failing rank its
        own error, the others `RankFailed` with its exit code), so no rank is left waiting in a collective."""
        code = self.max(float(getattr(error, "exit_code", EXIT_FAILED)) if error is not None else 0.0)
        if error is not None:
            raise error
        if code:
            raise RankFailed(int(code))

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of a device tensor over ranks (default group: NCCL on GPUs), in place."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
            gc.collect()  # free the backends' C++ objects now, not during interpreter shutdown


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    group = dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), group=group)
