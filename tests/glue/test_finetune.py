"""cramming_simple/glue/finetune.py: schedules per task, heads, batches, and fine-tuning that learns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.glue_data import (
    copy_run,
    results,
    run_glue,
)

from cramming_simple.folders import load_model, save_model
from cramming_simple.glue import finetune
from cramming_simple.glue.config import Protocol, load_protocol
from cramming_simple.model import MaskedLM, arch_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_task_schedule_comes_from_its_own_step_count():
    paper = Protocol()
    assert finetune.schedule_steps(1000, paper) == (5 * 32, 16)  # ceil(1000 / 32) = 32 steps per epoch
    assert finetune.schedule_steps(100, paper) == (5 * 4, 2)

    def lr_trace(examples: int) -> list[float]:
        model = torch.nn.Linear(2, 2)
        total, warmup = finetune.schedule_steps(examples, paper)
        optimizer, scheduler = finetune.optimizer_and_schedule(model, paper, total, warmup, torch.device("cpu"))
        trace = []
        for _ in range(finetune.schedule_steps(examples, paper)[0]):
            trace.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return trace

    small_alone = lr_trace(100)
    big = lr_trace(1000)
    small_after_big = lr_trace(100)
    assert small_after_big == small_alone
    assert np.argmax(big) == 16 and np.argmax(small_alone) == 2  # warmup ends at each task's own 10 %
    assert max(big) == max(small_alone) == pytest.approx(paper.lr)
    assert big[-1] < 0.01 * paper.lr and small_alone[-1] < 0.05 * paper.lr  # cosine down to ~0 at each task's end


def test_finetuning_learns_a_learnable_task(pretrained_run, glue_dir, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "sst2") == 0  # the shipped smoke protocol as it is
    record = results(run)[("sst2", 1)]
    assert record["status"] == "ok" and record["examples"] == {"train": 320, "validation": 64}
    accuracy = record["metrics"]["validation"]["accuracy"]
    assert accuracy >= 0.8, record["epochs"]  # chance is 0.5
    assert record["epochs"][0]["train_loss"] > record["epochs"][-1]["train_loss"]
    assert len(record["epochs"]) == 5 and record["metrics"] == record["epochs"][-1]["metrics"]
    summary = pd.read_json(run / "glue/summary.json", typ="series")
    assert summary["columns"]["SST-2"]["mean"] == pytest.approx(100 * accuracy)


def test_the_head_width_is_the_protocols(tmp_path):
    save_model(MaskedLM(arch_config("tiny"), "preln"), tmp_path / "model")
    wide = load_model(tmp_path / "model", num_labels=3, head_width=1024)
    assert (wide.classifier.dense.in_features, wide.classifier.dense.out_features, wide.classifier.out.in_features) == (
        128,
        1024,
        1024,
    )
    plain = load_model(tmp_path / "model", num_labels=3)
    assert plain.classifier.dense.out_features == 128 and plain.classifier.out.in_features == 128
    assert load_protocol("published")[1].head_width == 1024 and load_protocol("paper")[1].head_width is None


def test_warmup_from_each_task_or_from_the_first_task():
    each = load_protocol("paper")[1]
    first = load_protocol("published", ["drop_last=false"])[1]  # the warmup rule alone (drop_last: test_upload_...)
    cola, rte, mnli = 8551, 2490, 392702  # GLUE training set sizes
    assert finetune.schedule_steps(rte, each) == (5 * 78, math.ceil(0.1 * 5 * 78))
    assert finetune.schedule_steps(mnli, each)[1] == math.ceil(0.1 * 5 * 12272)
    cola_steps = 5 * math.ceil(cola / 32)
    for task in (cola, rte, mnli):  # every task warms up for CoLA's int(0.1 x steps)
        assert finetune.schedule_steps(task, first, first_task_examples=cola) == (
            5 * math.ceil(task / 32),
            int(0.1 * cola_steps),
        )
    with pytest.raises(ValueError, match="warmup_task"):
        finetune.schedule_steps(rte, first)


def test_published_glue_batches_drop_the_last_partial_batch_as_crammings_dataloader():
    from cramming_simple.glue.finetune import epoch_order, schedule_steps

    paper, published = load_protocol("paper")[1], load_protocol("published")[1]
    cola = 8551  # CoLA's training examples: 267 full batches of 32 and one of 7
    assert schedule_steps(cola, paper) == (5 * 268, 134)
    assert schedule_steps(cola, published, first_task_examples=cola) == (5 * 267, 133)  # cramming's 133
    rng = np.random.default_rng(0)
    order = epoch_order(published, 70, rng)
    assert len(order) == 64 and len(set(order.tolist())) == 64
    stored = load_protocol("paper", ["train_order=stored", "drop_last=true"])[1]
    assert epoch_order(stored, 70, rng).tolist() == list(range(64)) == epoch_order(stored, 70, rng).tolist()
    assert len(epoch_order(paper, 70, rng)) == 70
