"""One training step, the same everywhere: pretraining, the speed bench, check-block and GLUE fine-tuning.

A step is split in the two halves that gradient accumulation needs:
  `backward(batch, scale, sync)`  forward with the loss under autocast, then backward of `loss * scale` through
                                  the GradScaler; under DDP only the last microbatch of an update all-reduces;
  `update()`                      unscale, clip the gradient norm, optimiser step, scaler update, zero_grad.
`step(batch)` is both at once (one microbatch per update). The forward runs under `CompiledModule`, so a failed
compile falls back to eager once, whoever calls it. The bench times exactly this object, so the speed it reports
is the trainer's step, clipping and scaler included.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..runtime import CompiledModule, autocast


def keyword_loss(model: nn.Module, batch: dict) -> Tensor:
    """The pretraining forward: `model(**batch)` returns the scalar MLM loss."""
    return model(**batch)


class TrainStep:
    """Forward, backward, clipping, GradScaler and optimiser step of one model (see the module docstring).

    `loss_fn(module, batch) -> scalar loss`: how a batch reaches the model (default `model(**batch)`).
    `grad_clip`: clip the global gradient norm to this (None: no clipping, and `update` returns None).
    `ddp`: the DDP wrapper of `model`, if any; it is what runs, and what skips the all-reduce between updates.
    `scaler`: a GradScaler made earlier (the trainer restores its state from a checkpoint before this is built).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        dtype: torch.dtype | None,
        grad_clip: float | None = None,
        compile_model: bool = False,
        loss_fn: Callable[[nn.Module, Any], Tensor] = keyword_loss,
        ddp: DistributedDataParallel | None = None,
        name: str = "model",
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.model, self.optimizer, self.device, self.dtype = model, optimizer, device, dtype
        self.grad_clip, self.loss_fn, self.ddp = grad_clip, loss_fn, ddp
        # fp16 needs a GradScaler; under bf16 / fp32 it is disabled and passes everything through
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.runner = CompiledModule(
            ddp if ddp is not None else model, compile_model, name, reset=lambda: optimizer.zero_grad(set_to_none=True)
        )

    @property
    def compiled(self) -> bool:
        return self.runner.compiled

    def backward(self, batch: Any, scale: float = 1.0, sync: bool = True) -> Tensor:
        """Forward and backward of one microbatch; returns its loss (on the device, not synced)."""
        return self.runner.run(self._forward_backward, batch, scale, sync)

    def _forward_backward(self, module: nn.Module, batch: Any, scale: float, sync: bool) -> Tensor:
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with autocast(self.device, self.dtype):
                loss = self.loss_fn(module, batch)
            self.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
        return loss

    def update(self) -> Tensor | None:
        """The optimiser step after the last microbatch; returns the gradient norm before clipping (or None)."""
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip) if self.grad_clip else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def step(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        """One microbatch that is a whole update: (loss, gradient norm)."""
        loss = self.backward(batch)
        return loss, self.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state)
