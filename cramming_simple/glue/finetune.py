"""Fine-tune a pretrained encoder on one GLUE task with one seed (docs/recipe.md), scoring every epoch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import get_scheduler

from ..data.tokenizer import load_tokenizer
from ..folders import load_model, save_model
from ..optim import make_optimizer
from ..runtime import Progress, autocast, autocast_dtype, seed_everything, timed
from ..train.step import TrainStep
from .config import Protocol
from .data import Encoded, TaskData
from .metrics import compute, predictions
from .tasks import TaskSpec


def classifier_config(task: str, spec: TaskSpec) -> dict:
    """What a fine-tuned folder's config.json says about its task: the task, and its label names by id."""
    labels = {"id2label": dict(enumerate(spec.labels)), "label2id": {n: i for i, n in enumerate(spec.labels)}}
    return {"task": task, **(labels if spec.labels else {})}


def optimizer_steps(train_examples: int, protocol: Protocol) -> int:
    """Steps over all epochs: every batch, or (drop_last, as cramming's dataloader) the full batches only."""
    batch = protocol.batch_size
    per_epoch = train_examples // batch if protocol.drop_last else math.ceil(train_examples / batch)
    return protocol.epochs * per_epoch


def epoch_order(protocol: Protocol, examples: int, rng: np.random.Generator) -> np.ndarray:
    """The training examples' order of one epoch: a new permutation every epoch, or (train_order=stored) the
    stored order; with drop_last, without the last partial batch."""
    order = rng.permutation(examples) if protocol.train_order == "shuffle" else np.arange(examples)
    if protocol.drop_last:
        order = order[: examples // protocol.batch_size * protocol.batch_size]
    return order


def schedule_steps(train_examples: int, protocol: Protocol, first_task_examples: int | None = None) -> tuple[int, int]:
    """(optimiser steps, warmup steps) of one task.

    warmup_from=each_task: the warmup is ceil(warmup x this task's steps), from its own size, never another's.
    warmup_from=first_task (the published runs): int(warmup x the steps of `warmup_task`, which has
    `first_task_examples` training examples), for every task, as cramming computed it for its first task and
    then kept it.
    """
    total = optimizer_steps(train_examples, protocol)
    if protocol.warmup_from == "first_task":
        if first_task_examples is None:
            raise ValueError("warmup_from=first_task needs the training set size of warmup_task")
        return total, int(protocol.warmup * optimizer_steps(first_task_examples, protocol))
    return total, math.ceil(protocol.warmup * total)


def optimizer_and_schedule(
    model: torch.nn.Module, protocol: Protocol, total: int, warmup: int, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no decay on biases, norms, gains) and the per-step LR schedule with warmup, for one task."""
    optimizer = make_optimizer(model, protocol.lr, protocol.weight_decay, protocol.betas, protocol.eps, device)
    return optimizer, get_scheduler(protocol.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, spec: TaskSpec, split: Encoded, protocol: Protocol, device: torch.device
) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """Metrics on one split (None where a metric is undefined, e.g. Pearson of constant predictions), and the
    per-example predictions in the split's own order: {"index", "prediction", "label"} (for paired bootstraps)."""
    model.eval()
    order = np.argsort(split.lengths, kind="stable")  # similar lengths together: little padding. Metrics ignore order.
    with autocast(device, autocast_dtype(device, protocol.precision)):
        logits = torch.cat(
            [model(ids, mask)[0].float() for ids, mask, _ in split.batches(order, protocol.eval_batch_size)]
        )
    preds = np.empty(len(order), dtype=np.float32 if spec.regression else np.int64)
    preds[order] = predictions(logits.cpu().numpy(), spec.regression)
    labels = split.labels.cpu().numpy()
    scores = compute(spec.metrics, preds, labels)
    per_example = {"index": np.arange(len(order)), "prediction": preds, "label": labels}
    return {k: v if math.isfinite(v) else None for k, v in scores.items()}, per_example


def finetune(
    model_dir: Path,
    task: str,
    spec: TaskSpec,
    protocol: Protocol,
    seed: int,
    data: TaskData,
    device: torch.device,
    log_every: int = 50,
    first_task_examples: int | None = None,
    save_to: Path | None = None,
) -> dict:
    """Train for the protocol's epochs and score the evaluation splits after each; the last epoch's scores count.

    A non-finite training loss ends the run as 'failed'. It is caught without a host sync per step: the step
    of the first bad loss is kept on the device and read at log points and at the end of every epoch. Under
    fp16 a GradScaler skips the steps whose gradients overflow (as cramming's did); the loss itself is checked
    all the same.

    save_to: where to keep the fine-tuned model when it finished ok (save_model: a Hugging Face folder with the
    task's label names and the pretrained model's tokenizer).
    """
    seed_everything(seed)  # the fresh head's init, dropout and the data order all follow the seed
    model = load_model(
        model_dir,
        num_labels=spec.num_labels,
        head_width=protocol.head_width,
        dropout=protocol.dropout,
        attention_dropout=protocol.attention_dropout,
    ).to(device)
    total, warmup = schedule_steps(len(data.train), protocol, first_task_examples)
    optimizer, scheduler = optimizer_and_schedule(model, protocol, total, warmup, device)
    dtype = autocast_dtype(device, protocol.precision)
    # the trainer's step (train.step): autocast, GradScaler under fp16, no clipping (the protocol has none)
    step = TrainStep(model, optimizer, device, dtype, loss_fn=lambda m, batch: m(*batch)[1])
    run = Epochs(model, step, scheduler, protocol, total // protocol.epochs, device, log_every)
    run.progress = Progress(total, f"{task} seed {seed}", unit="step")
    order_rng = np.random.default_rng(seed)
    for epoch in range(1, protocol.epochs + 1):
        if not run.train(epoch, data, epoch_order(protocol, len(data.train), order_rng)):
            break
        run.score(epoch, spec, data)
    status, reason, metrics = run.outcome()
    run.progress.close(status=status)
    if save_to is not None and status == "ok":
        save_model(model, save_to, load_tokenizer(model_dir), classifier_config(task, spec))
    return {
        "status": status,
        "reason": reason,
        "metrics": metrics if status == "ok" else {},
        "epochs": run.epochs,
        "train_time_s": run.train_time,
        "eval_time_s": run.eval_time,
        "steps": total,
        "warmup_steps": warmup,
        "predictions": run.per_example if status == "ok" else {},  # the last epoch's; written beside the result
    }


class Epochs:
    """The epochs of one fine-tuning run: training (no host sync per step) and scoring after each epoch."""

    def __init__(self, model, step: TrainStep, scheduler, protocol: Protocol, per_epoch: int, device, log_every: int):
        self.model, self.train_step, self.scheduler, self.protocol = model, step, scheduler, protocol
        self.per_epoch, self.device, self.log_every = per_epoch, device, log_every
        self.step, self.train_time, self.eval_time = 0, 0.0, 0.0
        self.first_bad = torch.full((), -1, device=device)  # index of the first step with a non-finite loss
        self.status, self.reason = "ok", None
        self.epochs: list[dict] = []
        self.per_example: dict[str, dict[str, np.ndarray]] = {}
        self.progress: Progress | None = None
        self.loss_sum = torch.zeros((), device=device)

    def train(self, epoch: int, data: TaskData, order: np.ndarray) -> bool:
        """One epoch of optimiser steps; False (and status 'failed') when a loss was not finite."""
        self.model.train()
        self.loss_sum = torch.zeros((), device=self.device)
        with timed() as train_t:
            for batch in data.train.batches(order, self.protocol.batch_size):
                loss, _ = self.train_step.step(batch)
                self.scheduler.step()
                loss = loss.detach()
                self.loss_sum += loss
                self.first_bad = torch.where((self.first_bad < 0) & ~loss.isfinite(), self.step, self.first_bad)
                self.step += 1
                if self.step % self.log_every == 0 and self.log_point(epoch) >= 0:
                    break
            bad = int(self.first_bad)
        self.train_time += train_t["s"]
        self.epoch_train_s = train_t["s"]
        if bad >= 0:
            where = f"epoch {epoch}, step {bad - (epoch - 1) * self.per_epoch + 1} of {self.per_epoch}"
            self.status, self.reason = "failed", f"non-finite training loss at {where}"
        return bad < 0

    def outcome(self) -> tuple[str, str | None, dict]:
        """(status, reason, the last epoch's metrics): failed as well when a metric came out undefined."""
        if self.status != "ok":
            return self.status, self.reason, {}
        metrics = self.epochs[-1]["metrics"]
        undefined = [f"{split} {name}" for split, values in metrics.items() for name, v in values.items() if v is None]
        if undefined:
            return (
                "failed",
                f"undefined metric after the last epoch: {', '.join(undefined)} (constant predictions?)",
                metrics,
            )
        return "ok", None, metrics

    def log_point(self, epoch: int) -> float:
        """The only sync inside an epoch: progress, and the first bad step (-1: none)."""
        bad, total = torch.stack([self.first_bad.float(), self.loss_sum]).tolist()
        mean = total / (self.step - (epoch - 1) * self.per_epoch)
        self.progress.update(self.step, loss=mean, lr=self.scheduler.get_last_lr()[0])
        return bad

    def score(self, epoch: int, spec: TaskSpec, data: TaskData) -> None:
        with timed() as eval_t:
            evaluated = {
                split: evaluate(self.model, spec, encoded, self.protocol, self.device)
                for split, encoded in data.evals.items()
            }
        self.per_example = {split: examples for split, (_, examples) in evaluated.items()}
        self.eval_time += eval_t["s"]
        self.epochs.append(
            {
                "epoch": epoch,
                "train_loss": float(self.loss_sum) / self.per_epoch,
                "lr": self.scheduler.get_last_lr()[0],
                "metrics": {split: metrics for split, (metrics, _) in evaluated.items()},
                "train_time_s": self.epoch_train_s,
                "eval_time_s": eval_t["s"],
            }
        )
        self.progress.update(self.step, epoch=epoch, loss=self.epochs[-1]["train_loss"])
