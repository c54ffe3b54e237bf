"""The training step before and after the issue-27 refactor, in one process, interleaved round by round: the old
Trainer's inline forward_backward + optimizer_step (as in commit 8bb4af6) against train.step.TrainStep, on two
identical models. Paired per-round ratios with a bootstrap interval (the bench's own estimator).

    PYTHONPATH=. python reports/bench/scripts/2026-12-03-step-before-after.py 60
"""

import statistics
import sys
import time

import torch

from cramming_simple.bench import make_batch
from cramming_simple.bench.intervals import paired_ratios, ratio_interval
from cramming_simple.model import MaskedLM, arch_config
from cramming_simple.optim import make_optimizer
from cramming_simple.runtime import CompiledModule, autocast, autocast_dtype
from cramming_simple.train.step import TrainStep

torch.set_num_threads(2)
CFG, CPU = arch_config("tiny"), torch.device("cpu")
DATA = make_batch(CFG, 32, CPU, 0)
BATCH = {"input_ids": DATA.input_ids, "positions": DATA.positions, "labels": DATA.labels}
DTYPE = autocast_dtype(CPU, "auto")


def build():
    torch.manual_seed(0)
    model = MaskedLM(CFG, "sasp")
    return model, make_optimizer(model, 3e-3, 0.1, (0.9, 0.98), 1e-12, CPU, "ndim")


class Old:
    """The pre-refactor Trainer's step, as it was (one microbatch per update, no DDP)."""

    def __init__(self):
        self.model, self.optimizer = build()
        self.scaler = torch.amp.GradScaler("cpu", enabled=DTYPE == torch.float16)
        self.runner = CompiledModule(self.model, False, reset=lambda: self.optimizer.zero_grad(set_to_none=True))

    def forward_backward(self, model, batch, scale, sync):
        with autocast(CPU, DTYPE):
            loss = model(**batch)
        self.scaler.scale(loss * scale).backward()
        return loss

    def step(self):
        self.runner.run(self.forward_backward, BATCH, 1.0, True)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.5)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


class New:
    def __init__(self):
        model, optimizer = build()
        self.train_step = TrainStep(model, optimizer, CPU, DTYPE, 0.5)

    def step(self):
        self.train_step.backward(BATCH, 1.0, True)
        self.train_step.update()


def main(rounds: int) -> None:
    sides, times = {"old": Old(), "new": New()}, {"old": [], "new": []}
    for r in range(rounds + 3):  # 3 warm-up rounds
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            start = time.perf_counter()
            sides[name].step()
            if r >= 3:
                times[name].append(time.perf_counter() - start)
    iv = ratio_interval(paired_ratios(times["old"], times["new"]))
    old, new = (1e3 * statistics.median(times[k]) for k in ("old", "new"))
    print(
        f"{rounds} rounds, tiny sasp batch 32, {DTYPE}: median step old {old:.1f} ms, new {new:.1f} ms; "
        f"paired old/new {iv.diff:.3f} [{iv.low:.3f}, {iv.high:.3f}]"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
