"""cramming_simple/train/step.py: one train step for every trainer, accumulating like one big batch."""

from __future__ import annotations

import math

import torch
from helpers.imports import PACKAGE, package_files


def test_every_trainer_uses_the_one_train_step():
    """The trainer, the bench, check-block and GLUE fine-tuning all build train.step.TrainStep; nobody else calls
    backward or an optimiser step."""
    users = {
        p.relative_to(PACKAGE).as_posix()
        for p in package_files()
        if "TrainStep(" in p.read_text() and p.relative_to(PACKAGE).as_posix() != "train/step.py"
    }
    assert {"train/loop.py", "bench/step.py", "check/card.py", "glue/finetune.py"} <= users
    own_steps = []
    for path in package_files():
        if path.relative_to(PACKAGE).as_posix() == "train/step.py":
            continue
        text = path.read_text()
        for needle in (".backward()", "scaler.step(", "clip_grad_norm_("):
            if needle in text:
                own_steps.append(f"{path.relative_to(PACKAGE)}: {needle}")
    allowed = {"check/card.py: .backward()"}  # the gradient checks (one backward, no update) are not training
    assert set(own_steps) <= allowed, own_steps


def test_train_step_accumulates_like_one_big_batch():
    from cramming_simple.train.step import TrainStep

    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def run(chunks: int) -> torch.Tensor:
        torch.manual_seed(1)
        model = torch.nn.Linear(4, 1)
        step = TrainStep(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.device("cpu"),
            None,
            grad_clip=1e9,
            loss_fn=lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
        )
        for xb, yb in zip(x.chunk(chunks), y.chunk(chunks)):
            step.backward((xb, yb), 1.0 / chunks)
        norm = step.update()
        assert norm is not None and math.isfinite(float(norm))
        return model.weight.detach()

    assert torch.allclose(run(1), run(4), atol=1e-6)
