"""The data-path bench: a budget's data path (shards -> shuffle and masking -> device) against its training step.

Rows, measured one after the other in one process: the producer alone (one microbatch read from the
memory-mapped shards, shuffled and masked, as the background thread makes it); the whole path through the
prefetcher onto the device with an idle consumer (its throughput); and the training step of the baseline
block at the budget's arch and microbatch on those batches. The path keeps up when its batches/s is well
above the step's (the target is 10x).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import torch

from ..data import MicrobatchStream, MLMCollator, PackedData, Prefetcher, load_tokenizer, prepare
from ..markdown import table as markdown_table
from ..model import MaskedLM, block_spec
from ..optim import make_optimizer
from ..reference import BASELINE
from ..runtime import autocast_dtype, environment, now_iso, precision_name, seed_everything
from ..train.config import PretrainConfig
from .step import Contender, timed_step

DATA_BATCHES = 200  # microbatches per data-path measurement (milliseconds each)


def data_bench(
    cfg: PretrainConfig, device: torch.device, precision: str, compile_model: bool, steps: int, warmup: int
) -> dict:
    dtype = autocast_dtype(device, precision)
    prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
    tok = load_tokenizer(prepared.tokenizer_dir)
    collate = MLMCollator.for_tokenizer(tok, cfg.arch.seq_len, cfg.train.mask_prob, cfg.train.seed, cfg.train.masking)
    stream = MicrobatchStream(
        PackedData(prepared.path, verify=False), collate, cfg.train.microbatch, cfg.train.seed, order=cfg.data.order
    )
    produce, delivered, batch = time_data_path(stream, cfg, device)
    step, contender = time_train_step(cfg, batch, device, dtype, compile_model, steps, warmup)
    tokens = cfg.train.microbatch * cfg.arch.seq_len
    rows = [
        {
            "name": "produce",
            "what": "one microbatch from the shards: shuffle, read, mask (the background thread's work)",
            "seconds": produce,
        },
        {
            "name": "deliver",
            "what": "through the prefetcher onto the device, consumer idle (the path's throughput)",
            "seconds": delivered,
        },
        {
            "name": "train",
            "what": f"one {contender.title} training step at {cfg.arch.preset}, microbatch {cfg.train.microbatch}",
            "seconds": step,
        },
    ]
    for r in rows:
        r["batches_per_s"] = 1.0 / r["seconds"]
        r["tokens_per_s"] = tokens / r["seconds"]
        r["x_train_step"] = step / r["seconds"]
    settings = {
        "budget": cfg.budget,
        "arch": cfg.arch.preset,
        "microbatch": cfg.train.microbatch,
        "seq_len": cfg.arch.seq_len,
        "data": str(prepared.path),
        "batches": DATA_BATCHES,
        "train_steps": steps,
        "compile": contender.compiled,
        "precision": precision_name(dtype),
        "threads": torch.get_num_threads(),
    }
    env = environment(device)
    result = {"rows": rows, "device": env["device"], "device_type": device.type, "date": now_iso()}
    return {**result, "settings": settings, "environment": env}


def time_data_path(stream: MicrobatchStream, cfg: PretrainConfig, device: torch.device) -> tuple[float, float, dict]:
    """(median seconds to produce one microbatch, seconds per microbatch delivered through the prefetcher, the last
    microbatch delivered)."""
    n, produce = DATA_BATCHES, []
    for b in range(n):
        start = time.perf_counter()
        stream(b)
        produce.append(time.perf_counter() - start)
    prefetch = Prefetcher(stream, n, device, cfg.impl.prefetch)
    next(prefetch)  # the thread has started and filled its queue once
    start = time.perf_counter()
    for _ in range(n):
        batch = next(prefetch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    delivered = (time.perf_counter() - start) / n
    prefetch.close()
    return statistics.median(produce), delivered, batch


def time_train_step(
    cfg: PretrainConfig, batch: dict, device: torch.device, dtype, compile_model: bool, steps: int, warmup: int
) -> tuple[float, Contender]:
    """The median seconds of the budget's own training step (train.step.TrainStep) on one delivered microbatch."""
    seed_everything(cfg.train.seed)
    with torch.device(device):
        model = MaskedLM(cfg.arch, BASELINE).train()
    t = cfg.train
    optimizer = make_optimizer(model, t.lr, t.weight_decay, tuple(t.betas), t.eps, device, t.decay_rule)
    contender = Contender(BASELINE, block_spec(BASELINE).title, model, lambda m: m(**batch), optimizer, Counter())
    contender.prepare(dtype, device, compile_model)
    train_times = []
    for r in range(warmup + steps):
        seconds, _ = timed_step(contender, device)
        if r >= warmup:
            train_times.append(seconds)
    return statistics.median(train_times), contender


def render_data(result: dict) -> str:
    columns = {
        "stage": lambda r: r["name"],
        "what": lambda r: r["what"],
        "ms/batch": lambda r: f"{1e3 * r['seconds']:.2f}",
        "batches/s": lambda r: f"{r['batches_per_s']:,.1f}",
        "tokens/s": lambda r: f"{r['tokens_per_s']:,.0f}",
        "x the training step": lambda r: f"{r['x_train_step']:.1f}",
    }
    s = result["settings"]
    return (
        "\n".join(
            [
                f"# Data path vs training step, budget {s['budget']}",
                "",
                markdown_table(
                    list(columns), [[f(r) for f in columns.values()] for r in result["rows"]], left=["stage", "what"]
                ),
                f"- device: {result['device']}; torch {result['environment']['torch']}; {s['threads']} CPU "
                f"threads; {result['date']}",
                f"- data {s['data']}; microbatch {s['microbatch']} x {s['seq_len']}; medians of {s['batches']} "
                f"batches and {s['train_steps']} steps; "
                f"precision {s['precision']}; compile {s['compile']}",
                "- the path keeps up when 'deliver' is well above 1x the training step (target: 10x); on a CPU the "
                "producer thread shares cores with the step.",
            ]
        )
        + "\n"
    )
