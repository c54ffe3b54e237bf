"""Fine-tune a pretrained encoder on one GLUE task with one seed (docs/recipe.md), scoring every epoch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from transformers import get_scheduler

from ..data.tokenizer import load_tokenizer
from ..model import load_model, save_model
from ..optim import make_optimizer
from ..runtime import Progress, autocast, autocast_dtype, seed_everything, timed
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
    per_epoch = total // protocol.epochs
    dtype, order_rng = autocast_dtype(device, protocol.precision), np.random.default_rng(seed)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    progress = Progress(total, f"{task} seed {seed}", unit="step")

    epochs: list[dict] = []
    per_example: dict[str, dict[str, np.ndarray]] = {}
    status, reason, step, train_time, eval_time = "ok", None, 0, 0.0, 0.0
    first_bad = torch.full((), -1, device=device)  # index of the first step with a non-finite loss
    for epoch in range(1, protocol.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        with timed() as train_t:
            for ids, mask, labels in data.train.batches(
                epoch_order(protocol, len(data.train), order_rng), protocol.batch_size
            ):
                with autocast(device, dtype):
                    _, loss = model(ids, mask, labels)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = loss.detach()
                loss_sum += loss
                first_bad = torch.where((first_bad < 0) & ~loss.isfinite(), step, first_bad)
                step += 1
                if step % log_every == 0:  # the only syncs inside an epoch: progress and the non-finite check
                    bad, mean = torch.stack([first_bad.float(), loss_sum]).tolist()
                    progress.update(step, loss=mean / (step - (epoch - 1) * per_epoch), lr=scheduler.get_last_lr()[0])
                    if bad >= 0:
                        break
            bad = int(first_bad)
        train_time += train_t["s"]
        if bad >= 0:
            status, reason = (
                "failed",
                f"non-finite training loss at epoch {epoch}, step {bad - (epoch - 1) * per_epoch + 1} of {per_epoch}",
            )
            break
        with timed() as eval_t:
            evaluated = {
                split: evaluate(model, spec, encoded, protocol, device) for split, encoded in data.evals.items()
            }
            scores = {split: metrics for split, (metrics, _) in evaluated.items()}
            per_example = {split: examples for split, (_, examples) in evaluated.items()}
        eval_time += eval_t["s"]
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": float(loss_sum) / per_epoch,
                "lr": scheduler.get_last_lr()[0],
                "metrics": scores,
                "train_time_s": train_t["s"],
                "eval_time_s": eval_t["s"],
            }
        )
        progress.update(step, epoch=epoch, loss=epochs[-1]["train_loss"])

    metrics = epochs[-1]["metrics"] if status == "ok" else {}
    undefined = [f"{split} {name}" for split, values in metrics.items() for name, v in values.items() if v is None]
    if undefined:
        status, reason = (
            "failed",
            f"undefined metric after the last epoch: {', '.join(undefined)} (constant predictions?)",
        )
    progress.close(status=status)
    if save_to is not None and status == "ok":
        save_model(model, save_to, load_tokenizer(model_dir), classifier_config(task, spec))
    return {
        "status": status,
        "reason": reason,
        "metrics": metrics if status == "ok" else {},
        "epochs": epochs,
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "steps": total,
        "warmup_steps": warmup,
        "predictions": per_example if status == "ok" else {},  # the last epoch's; written beside the result
    }
