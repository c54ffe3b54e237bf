"""`cramming-simple bench`: time full training steps of every block side by side, in one process.

A training step is forward with the sparse-prediction MLM loss, backward, AdamW step, zero_grad: what
pretraining does for a microbatch that ends an optimiser step. Every block is built once, then round by
round each takes one timed step, in an order rotated every round, so that drift of the machine (other
jobs, clocks, heat) hits all blocks alike. The first --warmup rounds are not timed (they absorb
torch.compile and allocator warm-up).

Reported per block: median steps/s and tokens/s, tokens/s relative to `preln` (the paper's speed
column; `preln` is therefore always timed), peak memory, parameters, and the matmul FLOP rate, with MFU
on GPUs whose dense bf16 peak is known. `--peer hf` adds Hugging Face's BertForMaskedLM of the same size.

Inputs: random token ids with exactly round(0.25 T) masked positions per row (static shapes), made once
before timing.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import Tensor, nn

from .config import REPO_ROOT, ConfigError
from .model import BLOCKS, IGNORE, PRESETS, ArchConfig, MaskedLM, arch_config, block_spec
from .optim import make_optimizer
from .runtime import (
    PRECISIONS,
    Progress,
    autocast,
    autocast_dtype,
    compile_model,
    environment,
    now_iso,
    pick_device,
    seed_everything,
    write_json,
)

REFERENCE = "preln"
MASK_PROB = 0.25  # SPEC section 3: exactly round(0.25 T) masked positions per sequence
PUBLISHED = REPO_ROOT / "reports" / "reference" / "he2023_table1.csv"  # the paper's speed column
# (batch, timed steps, warm-up steps) by device type: a few minutes for all blocks on either.
DEFAULTS = {"cuda": (128, 50, 10), "cpu": (8, 5, 2)}
DATA_BATCHES = 200  # --data: microbatches per data-path measurement (milliseconds each)
COMPILE_WARMUP = 3  # the first compiled step compiles forward and backward; give it a few more
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched as substrings of the CUDA device name in this
# order. "H100 80GB HBM3" is how the SXM card names itself.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 SXM", 989.0),
    ("H100 80GB HBM3", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("A6000", 155.0),  # approximate
    ("4090", 165.0),  # approximate
]
FLOP_FORMULA = (
    "FLOPs per step = 3 x B x (2 T N + 4 T^2 d L + 2 P d V): forward + backward = 3 x the forward matmuls; "
    "N = weights of the matrices every token passes through (all matrices of the blocks, plus Hugging Face's "
    "MLM transform); 4 T^2 d L = attention scores Q K^T and A V over all heads and layers; P = positions "
    "that reach the decoder (the masked ones with sparse prediction, all T for hf-bert); no FLOPs for "
    "elementwise ops, norms, softmax or the embedding lookup."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="crammed-bert", choices=sorted(PRESETS))
    parser.add_argument("--blocks", default="all", help=f"'all' or a comma list of {', '.join(BLOCKS)}; {REFERENCE} is always timed (the reference)")
    parser.add_argument("--batch", type=int, help="sequences per step (default: 128 on CUDA, 8 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per block (default: 50 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, help=f"untimed steps per block first (default: 10 on CUDA, 2 on CPU; at least {COMPILE_WARMUP} with --compile)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="autocast dtype; auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile every model, as pretraining does (default: on for CUDA, off for CPU; warm-up absorbs compile time)")
    parser.add_argument("--peer", choices=["hf"], help="also time Hugging Face BertForMaskedLM of the same size (row 'hf-bert')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help='print {"rows": [...], "device": ..., ...} instead of the table')
    parser.add_argument("--out", default="reports/bench", help="folder for bench.md and bench.json (bench_data.* with --data)")
    parser.add_argument("--data", action="store_true", help="instead: time the data path of --budget (shards -> masking -> device) against its training step")
    parser.add_argument("--budget", default="smoke", help="with --data: the budget whose data, arch and microbatch are used (default: smoke)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="with --data: budget overrides, e.g. train.microbatch=128")


# ----------------------------------------------------------------------------------------------- inputs


@dataclass
class Batch:
    input_ids: Tensor  # (B, T)
    positions: Tensor  # (B, M) masked positions, ascending
    labels: Tensor  # (B, M) the original ids at those positions

    def dense_labels(self) -> Tensor:
        """(B, T): IGNORE except at the masked positions, the labels format of Hugging Face's MLM head."""
        return torch.full_like(self.input_ids, IGNORE).scatter(1, self.positions, self.labels)


def make_batch(cfg: ArchConfig, batch: int, device: torch.device, seed: int) -> Batch:
    """Random ids (above the 5 special-token ids) with exactly round(0.25 T) masked positions per row.

    Speed does not depend on the values, so the masked inputs keep their ids ([MASK] is a tokenizer matter).
    """
    g = torch.Generator().manual_seed(seed)
    T, M = cfg.seq_len, round(MASK_PROB * cfg.seq_len)
    ids = torch.randint(5, cfg.vocab_size, (batch, T), generator=g)
    positions = torch.rand(batch, T, generator=g).argsort(dim=1)[:, :M].sort(dim=1).values
    return Batch(ids.to(device), positions.to(device), ids.gather(1, positions).to(device))


# ----------------------------------------------------------------------------------------------- FLOPs


def matrix_weights(module: nn.Module) -> int:
    """Weights of all matrices in `module`: in the blocks every one of them is a per-token matmul."""
    return sum(p.numel() for p in module.parameters() if p.ndim == 2)


def step_flops(cfg: ArchConfig, batch: int, token_weights: int, predicted: int) -> float:
    """Matmul FLOPs of one training step (see FLOP_FORMULA); `predicted` is P, positions per row decoded."""
    T, d, L, V = cfg.seq_len, cfg.width, cfg.depth, cfg.vocab_size
    forward = 2 * T * token_weights + 4 * T * T * d * L + 2 * predicted * d * V  # one sequence
    return 3.0 * batch * forward


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


# ----------------------------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One row: a model, its optimiser and its loss on the fixed batch, plus what timing collects."""

    name: str
    title: str
    eager: nn.Module  # the plain module
    loss: Callable[[nn.Module], Tensor]  # one forward, returning the scalar loss
    optimizer: torch.optim.Optimizer
    flops: float  # matmul FLOPs of one training step
    model: nn.Module | None = None  # what runs: the compiled wrapper or the eager module
    compiled: bool = False
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    def step(self, dtype: torch.dtype | None, device: torch.device) -> None:
        with autocast(device, dtype):
            loss = self.loss(self.model)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Weights and optimiser state: what stays allocated between steps (gradients are set to None)."""
        tensors = list(self.eager.parameters()) + [t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)


def block_contender(name: str, cfg: ArchConfig, data: Batch, device: torch.device) -> Contender:
    spec = block_spec(name)
    with torch.device(device):
        model = MaskedLM(cfg, name).train()  # dropout is 0 in pretraining, so train() == eval() here
    return Contender(
        name=name,
        title=spec.title,
        eager=model,
        loss=lambda m: m(data.input_ids, data.positions, data.labels),
        optimizer=make_optimizer(model, spec.lr, spec.weight_decay, device=device),
        flops=step_flops(cfg, len(data.input_ids), matrix_weights(model.encoder.layers), data.positions.shape[1]),
    )


def hf_config(cfg: ArchConfig):
    """BertConfig of our width, depth, heads, vocabulary and length, FFN sized to our GLU's parameters.

    Our GLU has G d (up) + G/2 d (down) = 1.5 G d weights; BERT's FFN has 2 I d, so I = 3 G / 4 (2304 at
    crammed-bert). Dropout 0, since we pretrain without dropout; SDPA attention, its fastest eager path.
    """
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        intermediate_size=round(3 * cfg.glu_width / 4),
        max_position_embeddings=cfg.seq_len,
        layer_norm_eps=cfg.norm_eps,
        initializer_range=cfg.init_std,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )


def hf_contender(cfg: ArchConfig, data: Batch, device: torch.device) -> Contender:
    from transformers import BertForMaskedLM

    with torch.device(device):
        model = BertForMaskedLM(hf_config(cfg)).train()
    labels = data.dense_labels()
    spec = block_spec(REFERENCE)
    # Per token: the blocks' matrices and the MLM head's dense transform; the decoder runs at all T positions.
    token_weights = matrix_weights(model.bert.encoder) + matrix_weights(model.cls.predictions.transform)
    return Contender(
        name="hf-bert",
        title="Hugging Face BERT",
        eager=model,
        loss=lambda m: m(input_ids=data.input_ids, labels=labels).loss,
        optimizer=make_optimizer(model, spec.lr, spec.weight_decay, device=device),
        flops=step_flops(cfg, len(data.input_ids), token_weights, cfg.seq_len),
    )


def saved_activation_bytes(c: Contender, dtype: torch.dtype | None, device: torch.device) -> int:
    """Bytes autograd keeps for backward in one eager forward: each storage once, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in c.eager.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t.detach()  # not t itself: a saved output holding itself would be a reference cycle (a leak)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, dtype):
        c.loss(c.eager)
    return sum(saved.values())


# ----------------------------------------------------------------------------------------------- timing


def timed_step(c: Contender, dtype: torch.dtype | None, device: torch.device) -> tuple[float, int]:
    """Seconds of one step and, on CUDA, its peak memory: the step's own growth on top of its weights and
    optimiser state (the other models' memory excluded)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    c.step(dtype, device)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) - base + c.state_bytes() if cuda else 0


def first_step(c: Contender, dtype: torch.dtype | None, device: torch.device) -> tuple[float, int]:
    """The first step of a compiled model is where inductor compiles: if that fails, run this row eager."""
    try:
        return timed_step(c, dtype, device)
    except Exception as err:  # noqa: BLE001 - any compile failure means: run eager
        if not c.compiled:
            raise
        warnings.warn(f"{c.name}: compiled step failed ({type(err).__name__}: {err}); timing it eager", stacklevel=2)
        c.model, c.compiled = c.eager, False
        c.optimizer.zero_grad(set_to_none=True)
        return timed_step(c, dtype, device)


def time_rounds(contenders: list[Contender], warmup: int, steps: int, dtype: torch.dtype | None, device: torch.device) -> None:
    """Round r: one step of every contender, the order rotated by r. Rounds before `warmup` are not kept."""
    progress = Progress(warmup + steps, "bench", unit="round", log_every=10.0, file=sys.stderr)
    gc.collect()
    for r in range(warmup + steps):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            seconds, peak_bytes = first_step(c, dtype, device) if r == 0 else timed_step(c, dtype, device)
            if r >= warmup:
                c.times.append(seconds)
                c.peak_bytes = max(c.peak_bytes, peak_bytes)
        progress.update(r + 1, phase="warm-up" if r < warmup else "timed")
    progress.close()


# ----------------------------------------------------------------------------------------------- results


def published_speeds() -> dict[str, float]:
    """The paper's speed column (Table 1), when the reference data is at hand (a source checkout)."""
    if not PUBLISHED.exists():
        return {}
    table = pd.read_csv(PUBLISHED)
    table = table[(table.ref == "he2023") & table.speed.notna()]
    return dict(zip(table.block, table.speed.astype(float)))


def result_row(c: Contender, tokens_per_step: int, peak: float | None, paper: dict[str, float]) -> dict:
    median = statistics.median(c.times)
    q1, _, q3 = statistics.quantiles(c.times, n=4) if len(c.times) > 1 else (median, median, median)
    tflops = c.flops / median / 1e12
    return {
        "name": c.name,
        "title": c.title,
        "params": sum(p.numel() for p in c.eager.parameters()),
        "steps_per_s": 1.0 / median,
        "tokens_per_s": tokens_per_step / median,
        "ratio_vs_preln": None,  # filled once the reference row is known
        "paper_ratio": paper.get(c.name),
        "step_s_median": median,
        "step_s_iqr_pct": 100.0 * (q3 - q1) / median,  # spread of this row's steps: the noise of the machine
        "step_s": c.times,
        "peak_mem_mb": c.peak_bytes / 2**20,
        "flops_per_step": c.flops,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "compiled": c.compiled,
    }


def markdown_table(rows: list[dict], columns: dict[str, Callable[[dict], str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(fmt(r) for fmt in columns.values()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(result: dict) -> str:
    s = result["settings"]
    cuda = result["device_type"] == "cuda"
    columns: dict[str, Callable[[dict], str]] = {
        "block": lambda r: r["title"],
        "params": lambda r: f"{r['params'] / 1e6:.1f}M",
        "steps/s": lambda r: f"{r['steps_per_s']:.3g}",
        "tokens/s": lambda r: f"{r['tokens_per_s']:,.0f}",
        f"vs {REFERENCE}": lambda r: f"{r['ratio_vs_preln']:.2f}",
        "paper": lambda r: "-" if r["paper_ratio"] is None else f"{r['paper_ratio']:.2f}",
        "spread": lambda r: f"{r['step_s_iqr_pct']:.0f}%",
        "peak MB": lambda r: f"{r['peak_mem_mb']:,.0f}",
        "TFLOP/s": lambda r: f"{r['tflops']:.3g}",
    }
    if cuda:
        columns["MFU"] = lambda r: "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    lines = [
        f"# Training-step speed, {s['arch']}",
        "",
        markdown_table(result["rows"], columns),
        f"- device: {result['device']}; torch {result['environment']['torch']}; {s['threads']} CPU threads for torch; {result['date']}",
        f"- batch {s['batch']} x {s['seq_len']} tokens ({s['masked']} masked per row), {s['warmup']} warm-up + {s['steps']} timed "
        f"steps per block, interleaved round by round; precision {s['precision']}; compile {s['compile']}",
        "- step: forward with the MLM loss, backward, AdamW step (fused kernel), zero_grad; median over the timed steps. "
        "spread: interquartile range of the step times over the median (the machine's noise).",
        f"- vs {REFERENCE}: tokens/s over {REFERENCE}'s; paper: the speed column of He & Hofmann (2024) Table 1 "
        "(RTX 2080 Ti, 24 h budget).",
        f"- peak MB: {result['peak_mem_method']}",
        f"- {FLOP_FORMULA}",
    ]
    lines += [f"- {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.data:
        return run_data(args)
    if args.overrides:
        raise ConfigError(f"key=value overrides ({' '.join(args.overrides)}) only apply with --data")
    device = pick_device(args.device)
    args.compile = device.type == "cuda" if args.compile is None else args.compile
    cfg = arch_config(args.arch)
    names = list(BLOCKS) if args.blocks == "all" else [b.strip() for b in args.blocks.split(",") if b.strip()]
    for name in names:
        block_spec(name)  # unknown names fail here, listing the valid ones
    names = [REFERENCE] + [n for n in dict.fromkeys(names) if n != REFERENCE]
    batch, steps, warmup = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    batch = args.batch if args.batch is not None else batch
    steps = args.steps if args.steps is not None else steps
    warmup = args.warmup if args.warmup is not None else warmup
    if args.compile:
        warmup = max(warmup, COMPILE_WARMUP)
    if batch < 1 or steps < 1 or warmup < 0:
        raise ConfigError("--batch and --steps must be positive, --warmup non-negative")
    dtype = autocast_dtype(device, args.precision)
    env = environment(device)
    notes: list[str] = []

    seed_everything(args.seed)
    data = make_batch(cfg, batch, device, args.seed)
    contenders = [block_contender(name, cfg, data, device) for name in names]
    if args.peer == "hf":
        contenders.append(hf_contender(cfg, data, device))
        notes.append("hf-bert: transformers BertForMaskedLM, same width, depth, heads, vocabulary and length, FFN width "
                     f"{round(3 * cfg.glu_width / 4)} (parameters of our GLU), dropout 0 (we pretrain without dropout), "
                     "SDPA attention, dense MLM head (decoder at every position), labels -100 except at the masked positions.")
    if device.type == "cuda":
        peak_method = "torch.cuda.max_memory_allocated during a step, minus what was allocated before it, plus the row's own weights and AdamW state"
    else:  # no per-model allocator statistics on CPU: count what must be held instead
        peak_method = ("estimate (CPU has no allocator statistics): weights + gradients + AdamW state + the activations "
                       "autograd saves in one eager forward (each storage once); no transient workspace")
        for c in contenders:
            c.peak_bytes = sum(p.numel() * p.element_size() for p in c.eager.parameters())  # gradients
            c.peak_bytes += saved_activation_bytes(c, dtype, device)
    for c in contenders:
        c.model, c.compiled = compile_model(c.eager, args.compile)

    time_rounds(contenders, warmup, steps, dtype, device)

    if device.type == "cpu":
        for c in contenders:
            c.peak_bytes += c.state_bytes()
        notes.append(f"process peak RSS (all models together): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    peak = peak_tflops(env["device"]) if device.type == "cuda" else None
    if device.type == "cuda" and peak is None:
        notes.append(f"MFU omitted: no known dense bf16 peak for '{env['device']}' (known: {', '.join(k for k, _ in PEAK_TFLOPS)})")
    elif peak is not None:
        notes.append(f"MFU: achieved TFLOP/s over the device's dense bf16 peak, {peak:g} TFLOP/s")
    if args.compile and not all(c.compiled for c in contenders):
        notes.append("compile fell back to eager for: " + ", ".join(c.name for c in contenders if not c.compiled))

    paper = published_speeds()
    rows = [result_row(c, data.input_ids.numel(), peak, paper) for c in contenders]
    for r in rows:
        r["ratio_vs_preln"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    result = {
        "rows": rows,
        "device": env["device"],
        "device_type": device.type,
        "date": now_iso(),
        "settings": {
            "arch": args.arch, "batch": batch, "seq_len": cfg.seq_len, "masked": data.positions.shape[1], "steps": steps,
            "warmup": warmup, "compile": args.compile, "precision": str(dtype).removeprefix("torch.") if dtype else "fp32",
            "threads": torch.get_num_threads(), "peer": args.peer, "seed": args.seed,
        },
        "peak_tflops": peak,
        "peak_mem_method": peak_method,
        "flop_formula": FLOP_FORMULA,
        "environment": env,
        "notes": notes,
    }
    out = Path(args.out)
    write_json(out / "bench.json", result)
    (out / "bench.md").write_text(render(result))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
        print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


# ----------------------------------------------------------------------------------------------- --data


def run_data(args: argparse.Namespace) -> int:
    """The data path of a budget against its training step, measured one after the other in one process.

    Rows: the producer alone (one microbatch read from the memory-mapped shards, shuffled and masked, as the
    background thread makes it); the whole path through the prefetcher onto the device with an idle
    consumer (its throughput); and the training step of `preln` at the budget's arch and microbatch on those
    batches. The path keeps up when its batches/s is well above the step's (the target is 10x).
    """
    from .data import MicrobatchStream, MLMCollator, PackedData, Prefetcher, load_tokenizer, prepare
    from .train.config import load_pretrain_config

    cfg = load_pretrain_config(args.budget, REFERENCE, args.overrides)
    device = pick_device(args.device)
    dtype = autocast_dtype(device, args.precision)
    prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
    tok = load_tokenizer(prepared.tokenizer_dir)
    collate = MLMCollator(cfg.arch.seq_len, cfg.train.mask_prob, tok.mask_token_id, tok.all_special_ids, len(tok), cfg.train.seed)
    stream = MicrobatchStream(PackedData(prepared.path, verify=False), collate, cfg.train.microbatch, cfg.train.seed)
    n = DATA_BATCHES
    steps = args.steps or DEFAULTS[device.type][1]
    warmup = args.warmup if args.warmup is not None else DEFAULTS[device.type][2]

    def per_item(times: list[float]) -> float:
        return statistics.median(times)

    produce = []
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

    seed_everything(cfg.train.seed)
    with torch.device(device):
        model = MaskedLM(cfg.arch, REFERENCE).train()
    compiled_model, compiled = compile_model(model, device.type == "cuda" if args.compile is None else args.compile)
    spec = block_spec(REFERENCE)
    contender = Contender(REFERENCE, spec.title, model, lambda m: m(**batch), make_optimizer(model, spec.lr, spec.weight_decay, device=device), 0.0, compiled_model, compiled)
    train_times = []
    for r in range(warmup + steps):
        seconds, _ = first_step(contender, dtype, device) if r == 0 else timed_step(contender, dtype, device)
        if r >= warmup:
            train_times.append(seconds)

    step = per_item(train_times)
    tokens = cfg.train.microbatch * cfg.arch.seq_len
    rows = [
        {"name": "produce", "what": "one microbatch from the shards: shuffle, read, mask (the background thread's work)", "seconds": per_item(produce)},
        {"name": "deliver", "what": "through the prefetcher onto the device, consumer idle (the path's throughput)", "seconds": delivered},
        {"name": "train", "what": f"one {spec.title} training step at {cfg.arch.preset}, microbatch {cfg.train.microbatch}", "seconds": step},
    ]
    for r in rows:
        r["batches_per_s"] = 1.0 / r["seconds"]
        r["tokens_per_s"] = tokens / r["seconds"]
        r["x_train_step"] = step / r["seconds"]
    result = {
        "rows": rows,
        "device": environment(device)["device"],
        "device_type": device.type,
        "date": now_iso(),
        "settings": {"budget": args.budget, "overrides": list(args.overrides), "arch": cfg.arch.preset, "microbatch": cfg.train.microbatch,
                     "seq_len": cfg.arch.seq_len, "data": str(prepared.path), "batches": n, "train_steps": steps, "compile": compiled,
                     "precision": str(dtype).removeprefix("torch.") if dtype else "fp32", "threads": torch.get_num_threads()},
        "environment": environment(device),
    }
    out = Path(args.out)
    write_json(out / "bench_data.json", result)
    columns = {
        "stage": lambda r: r["name"], "what": lambda r: r["what"], "ms/batch": lambda r: f"{1e3 * r['seconds']:.2f}",
        "batches/s": lambda r: f"{r['batches_per_s']:,.1f}", "tokens/s": lambda r: f"{r['tokens_per_s']:,.0f}",
        "x the training step": lambda r: f"{r['x_train_step']:.1f}",
    }
    s = result["settings"]
    text = "\n".join([
        f"# Data path vs training step, budget {args.budget}", "", markdown_table(rows, columns),
        f"- device: {result['device']}; torch {result['environment']['torch']}; {s['threads']} CPU threads; {result['date']}",
        f"- data {s['data']}; microbatch {s['microbatch']} x {s['seq_len']}; medians of {n} batches and {steps} steps; precision {s['precision']}; compile {s['compile']}",
        "- the path keeps up when 'deliver' is well above 1x the training step (target: 10x); on a CPU the producer thread shares cores with the step.",
    ]) + "\n"
    (out / "bench_data.md").write_text(text)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0
