"""The training-step bench: time full training steps of every block side by side, in one process.

A training step is forward with the sparse-prediction MLM loss, backward, AdamW step, zero_grad: what
pretraining does for a microbatch that ends an optimiser step. Every block is built once, then round by
round each takes one timed step, in an order rotated every round, so that drift of the machine (other
jobs, clocks, heat) hits all blocks alike. The first --warmup rounds are not timed (they absorb
torch.compile and allocator warm-up).

Reported per block: median steps/s and tokens/s, tokens/s relative to `preln` (the paper's speed
column; `preln` is therefore always timed), peak memory, parameters, and the matmul FLOP rate, with MFU
on GPUs whose dense bf16 peak is known. `--peer hf` adds Hugging Face's BertForMaskedLM of the same size.

The matmul ceiling (`Ceiling`): the matrix products each step makes (`step_gemms`: forward and backward shapes
of every weight, attention and the sparse decoder) run as bare matmuls in the same run and precision,
interleaved with the steps. A row's matmul efficiency, its FLOP rate over the ceiling's, says how much of the
step is spent outside matrix products.

Inputs: random token ids with exactly round(0.25 T) masked positions per row (static shapes), made once
before timing.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..model import IGNORE, ArchConfig, MaskedLM, arch_config, block_spec
from ..optim import make_optimizer
from ..reference import BASELINE
from ..runtime import (
    Progress,
    autocast,
    autocast_dtype,
    environment,
    now_iso,
    precision_name,
    seed_everything,
)
from ..train.config import TrainConfig, block_recipe
from ..train.step import TrainStep
from .flops import (
    CEILING_NOTE,
    FLOP_FORMULA,
    PEAK_TFLOPS,
    Ceiling,
    gemm_flops,
    matrices,
    peak_tflops,
    step_gemms,
)
from .intervals import precise_enough
from .profile import kernel_names, profile_step
from .results import RATIO_NOTE, result_rows

MASK_PROB = 0.25  # the recipe's masking rate (docs/recipe.md): exactly round(0.25 T) masked positions per sequence
# (batch, timed steps, warm-up steps) by device type: a few minutes for all blocks on either.
DEFAULTS = {"cuda": (128, 50, 10), "cpu": (8, 5, 2)}
COMPILE_WARMUP = 3  # the first compiled step compiles forward and backward; give it a few more

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


# ----------------------------------------------------------------------------------------------- contenders


@dataclass
class Contender:
    """One row: a model, its optimiser and its loss on the fixed batch, plus what timing collects. `prepare` puts
    it under the trainer's own step (`train.step.TrainStep`: clipping and GradScaler included), which is timed."""

    name: str
    title: str
    eager: nn.Module  # the plain module
    loss: Callable[[nn.Module], Tensor]  # one forward, returning the scalar loss
    optimizer: torch.optim.Optimizer
    gemms: Counter  # the matrix products of one training step (step_gemms)
    train_step: TrainStep | None = None  # what runs: the trainer's step, compiled (with its eager fallback) or not
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    @property
    def flops(self) -> float:
        """Matmul FLOPs of one training step."""
        return gemm_flops(self.gemms)

    @property
    def compiled(self) -> bool:
        return self.train_step is not None and self.train_step.compiled

    def prepare(self, dtype: torch.dtype | None, device: torch.device, compile_model: bool) -> None:
        """The pretraining step around this model: autocast, GradScaler, the recipe's gradient clipping."""
        self.train_step = TrainStep(
            self.eager,
            self.optimizer,
            device,
            dtype,
            TrainConfig().grad_clip,
            compile_model,
            loss_fn=lambda module, _: self.loss(module),
            name=self.name,
        )

    def step(self) -> None:
        self.train_step.step(None)  # the batch is fixed: the loss holds it

    def state_bytes(self) -> int:
        """Weights and optimiser state: what stays allocated between steps (gradients are set to None)."""
        tensors = list(self.eager.parameters()) + [
            t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
        ]
        return sum(t.numel() * t.element_size() for t in tensors)


def make_step_optimizer(model: nn.Module, block: str, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as pretraining makes it for `block`: its peak LR and weight decay, the recipe's betas, eps and rule."""
    recipe, t = block_recipe(block), TrainConfig()
    return make_optimizer(model, recipe.lr, recipe.weight_decay, tuple(t.betas), t.eps, device, t.decay_rule)


def block_contender(name: str, cfg: ArchConfig, data: Batch, device: torch.device) -> Contender:
    with torch.device(device):
        model = MaskedLM(cfg, name).train()  # dropout is 0 in pretraining, so train() == eval() here
    return Contender(
        name=name,
        title=block_spec(name).title,
        eager=model,
        loss=lambda m: m(data.input_ids, data.positions, data.labels),
        optimizer=make_step_optimizer(model, name, device),
        gemms=step_gemms(cfg, len(data.input_ids), matrices(model.encoder.layers), data.positions.shape[1]),
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
    # Per token: the blocks' matrices and the MLM head's dense transform; the decoder runs at all T positions.
    token_matrices = matrices(model.bert.encoder) + matrices(model.cls.predictions.transform)
    return Contender(
        name="hf-bert",
        title="Hugging Face BERT",
        eager=model,
        loss=lambda m: m(input_ids=data.input_ids, labels=labels).loss,
        optimizer=make_step_optimizer(model, BASELINE, device),
        gemms=step_gemms(cfg, len(data.input_ids), token_matrices, cfg.seq_len),
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


def timed_step(c: Contender, device: torch.device) -> tuple[float, int]:
    """Seconds of one step and, on CUDA, its peak memory: the step's own growth on top of its weights and
    optimiser state (the other models' memory excluded)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    c.step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cuda.max_memory_allocated(device) - base + c.state_bytes() if cuda else 0


@dataclass(frozen=True)
class Rounds:
    """How many rounds to time: at least `steps`; with a precision `target`, more until every ratio's 95 %
    interval half-width is below it (bench.intervals) or `max_seconds` of timing have passed."""

    warmup: int
    steps: int
    target: float | None = None
    max_seconds: float | None = None


def time_rounds(
    contenders: list[Contender],
    rounds: Rounds,
    device: torch.device,
    ceiling: Ceiling | None = None,
    seed: int = 0,
) -> str:
    """Round r: one step of every contender (and one pass of the ceiling's products), the order rotated by r.
    Rounds before `warmup` are not kept. Returns what stopped the timing: "rounds", "target" or "time cap"."""
    total = rounds.warmup + rounds.steps if rounds.target is None else None
    progress = Progress(total, "bench", unit="round", log_every=10.0, file=sys.stderr)
    gc.collect()
    entries: list = contenders + ([ceiling] if ceiling is not None else [])
    r, started = 0, None
    while True:
        if r == rounds.warmup:
            started = time.perf_counter()
        time_round(entries, r, r >= rounds.warmup, device)
        r += 1
        progress.update(r, phase="warm-up" if r <= rounds.warmup else "timed")
        stop = stop_reason(contenders, rounds, r - rounds.warmup, started, seed)
        if stop:
            progress.close(stopped=stop)
            return stop


def time_round(entries: list, r: int, keep: bool, device: torch.device) -> None:
    k = r % len(entries)
    for c in entries[k:] + entries[:k]:
        if isinstance(c, Ceiling):
            c.time_round(device, keep=keep)
            continue
        seconds, peak_bytes = timed_step(c, device)
        if keep:
            c.times.append(seconds)
            c.peak_bytes = max(c.peak_bytes, peak_bytes)


def stop_reason(contenders: list[Contender], rounds: Rounds, timed: int, started: float | None, seed: int) -> str:
    """ "" while more rounds are wanted; else what stopped them."""
    if timed < rounds.steps:
        return ""
    if rounds.target is None:
        return "rounds"
    times = {c.name: c.times for c in contenders}
    if precise_enough(times, contenders[0].name, rounds.target, seed):
        return "target"
    if rounds.max_seconds is not None and time.perf_counter() - started >= rounds.max_seconds:
        return "time cap"
    return ""


# ----------------------------------------------------------------------------------------------- results


def step_bench(
    arch: str | ArchConfig,
    names: list[str],
    batch: int,
    rounds: Rounds,
    device: torch.device,
    precision: str = "auto",
    compile_model: bool = False,
    peer: str | None = None,
    seed: int = 0,
    profile: int = 0,
) -> dict:
    """Time `names` (BASELINE first, always) and the optional peer round by round; the result as bench.json holds it.
    `profile`: after timing, profile that many steps of every row (`bench.profile`)."""
    cfg = arch if isinstance(arch, ArchConfig) else arch_config(arch)
    dtype = autocast_dtype(device, precision)
    seed_everything(seed)
    data = make_batch(cfg, batch, device, seed)
    contenders = make_contenders(cfg, names, data, device, peer)
    peak_method = count_cpu_memory(contenders, dtype, device)
    for c in contenders:
        c.prepare(dtype, device, compile_model)
    ceiling = Ceiling(contenders, dtype, device, seed)
    with kernel_names() if profile else contextlib.nullcontext():
        stopped = time_rounds(contenders, rounds, device, ceiling, seed)
        profiles = {c.name: profile_step(c.step, profile, device) for c in contenders} if profile else {}
    if device.type == "cpu":  # the estimate's held bytes (count_cpu_memory) plus weights and AdamW state
        for c in contenders:
            c.peak_bytes += c.state_bytes()
    env = environment(device)
    peak = peak_tflops(env["device"]) if device.type == "cuda" else None
    rows = result_rows(contenders, data.input_ids.numel(), peak, ceiling, seed)
    settings = {
        "arch": cfg.preset if isinstance(arch, ArchConfig) else arch,
        "batch": batch,
        "seq_len": cfg.seq_len,
        "masked": data.positions.shape[1],
        **rounds_settings(rounds, len(contenders[0].times), stopped),
        **{"compile": compile_model, "precision": precision_name(dtype), "threads": torch.get_num_threads()},
        "peer": peer,
        "seed": seed,
    }
    return {
        "rows": rows,
        "profile": profiles,
        "device": env["device"],
        "device_type": device.type,
        "date": now_iso(),
        "settings": settings,
        "peak_tflops": peak,
        "peak_mem_method": peak_method,
        "flop_formula": FLOP_FORMULA,
        "ceiling_note": CEILING_NOTE,
        "ratio_note": RATIO_NOTE,
        "ceiling_shapes": ceiling.shapes(),
        "environment": env,
        "notes": bench_notes(contenders, cfg, device, env, peak, compile_model, profile),
    }


def make_contenders(cfg: ArchConfig, names: list[str], data: Batch, device: torch.device, peer: str | None) -> list:
    """BASELINE first (always timed), then the other blocks in the order given, then the peer."""
    names = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    contenders = [block_contender(name, cfg, data, device) for name in names]
    if peer == "hf":
        contenders.append(hf_contender(cfg, data, device))
    return contenders


def rounds_settings(rounds: Rounds, timed: int, stopped: str) -> dict:
    return {
        "steps": timed,
        "warmup": rounds.warmup,
        "min_steps": rounds.steps,
        "precision_target": rounds.target,
        "max_seconds": rounds.max_seconds,
        "stopped_by": stopped,  # rounds (a fixed number) | target | time cap
    }


def bench_notes(contenders, cfg: ArchConfig, device, env: dict, peak, compile_model: bool, profile: int) -> list:
    notes = []
    if any(c.name == "hf-bert" for c in contenders):
        notes.append(
            "hf-bert: transformers BertForMaskedLM, same width, depth, heads, vocabulary and length, FFN width "
            f"{round(3 * cfg.glu_width / 4)} (parameters of our GLU), dropout 0 (we pretrain without dropout), "
            "SDPA attention, dense MLM head (decoder at every position), labels -100 except at the masked positions."
        )
    if device.type == "cpu":
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        notes.append(f"process peak RSS (all models together): {rss:,.0f} MB")
    if device.type == "cuda" and peak is None:
        known = ", ".join(k for k, _ in PEAK_TFLOPS)
        notes.append(f"MFU omitted: no known dense bf16 peak for '{env['device']}' (known: {known})")
    elif peak is not None:
        notes.append(f"MFU: achieved TFLOP/s over the device's dense bf16 peak, {peak:g} TFLOP/s")
    if compile_model and not all(c.compiled for c in contenders):
        notes.append("compile fell back to eager for: " + ", ".join(c.name for c in contenders if not c.compiled))
    if profile:
        notes.append(f"profile: {profile} steps per row after timing, inductor's CPU kernels named (kernel profiling)")
    return notes


def count_cpu_memory(contenders: list[Contender], dtype: torch.dtype | None, device: torch.device) -> str:
    """How peak memory is measured; on CPU (no allocator statistics) each row's held bytes are counted here."""
    if device.type == "cuda":
        return (
            "torch.cuda.max_memory_allocated during a step, minus what was allocated before it, "
            "plus the row's own weights and AdamW state"
        )
    for c in contenders:
        c.peak_bytes = sum(p.numel() * p.element_size() for p in c.eager.parameters())  # gradients
        c.peak_bytes += saved_activation_bytes(c, dtype, device)
    return (
        "estimate (CPU has no allocator statistics): weights + gradients + AdamW state + the activations "
        "autograd saves in one eager forward (each storage once); no transient workspace"
    )
