"""What a pretraining run carries from step to step: its counters (checkpointed with it) and the stop requests
that signals make."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field


@dataclass
class TrainState:
    microbatch_steps: int = 0  # per rank; also the data position
    optimizer_steps: int = 0
    tokens: int = 0  # all ranks
    elapsed_s: float = 0.0  # training time spent, all sessions
    step_time_s: float = 0.0  # recent seconds per microbatch: a resumed run must not start a step it cannot finish
    last_loss: float | None = None  # mean loss of the last log window, and over how many microbatches
    last_loss_steps: int = 0
    eval_loss: float | None = None  # held-out MLM loss at the last eval point, and after which optimiser step
    eval_step: int = -1
    eval_s: float = 0.0  # time spent evaluating and keeping snapshots (budget clock paused), all sessions
    snapshots: dict = field(default_factory=dict)  # "0.50" -> {dir, microbatch_steps, elapsed_s}
    # where it trained: a segment {device, node, from_step} whenever a session starts on other hardware (a
    # requeued job can land on another node; the report warns when a run's device changed mid-budget)
    hardware: list = field(default_factory=list)
    # No silent cap: the microbatch steps the run was projected to make by p = 1 (from the calibration or its first
    # minute), and the budget fraction at which train.max_microbatches / train.max_steps stopped it (None: they did not)
    projected_steps: int | None = None
    capped_at_p: float | None = None

    def trains_on(self, device: str, node: str) -> None:
        last = self.hardware[-1] if self.hardware else {}
        if (last.get("device"), last.get("node")) != (device, node):
            self.hardware.append({"device": device, "node": node, "from_step": self.microbatch_steps})


# SIGTERM: a preemption, a requeue, `kill`. SIGUSR2: Slurm's warning before a time limit (`--signal=USR2@120`, as
# submitit asks for), which Slurm sends to every process of the job: unhandled, it would kill the run outright.
STOP = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR2") if hasattr(signal, name))


class StopSignals:
    """SIGTERM (preemption), SIGUSR2 (a Slurm time limit near) and a first Ctrl-C ask for a checkpoint and a clean
    exit; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def __enter__(self):
        for sig in STOP:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        # print, not the logger: a signal handler may interrupt a logging call that holds the handler's lock
        print(
            f"\nreceived {signal.Signals(signum).name}: finishing this microbatch, writing a checkpoint, then exiting",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
