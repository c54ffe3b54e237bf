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
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..markdown import table as markdown_table
from ..model import IGNORE, ArchConfig, MaskedLM, arch_config, block_spec
from ..optim import make_optimizer
from ..reference import BASELINE, published_speeds
from ..runtime import (
    CompiledModule,
    Progress,
    autocast,
    autocast_dtype,
    environment,
    now_iso,
    precision_name,
    seed_everything,
)
from ..train.config import block_recipe
from .profile import kernel_names, profile_step, render_profiles

MASK_PROB = 0.25  # the recipe's masking rate (docs/recipe.md): exactly round(0.25 T) masked positions per sequence
# (batch, timed steps, warm-up steps) by device type: a few minutes for all blocks on either.
DEFAULTS = {"cuda": (128, 50, 10), "cpu": (8, 5, 2)}
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
    "FLOPs per step = 3 x B x (2 T N + 4 T^2 d L + 2 P d V), the matrix products listed by step_gemms: forward "
    "+ backward = 3 x the forward matmuls; "
    "N = weights of the matrices every token passes through (all matrices of the blocks, plus Hugging Face's "
    "MLM transform); 4 T^2 d L = attention scores Q K^T and A V over all heads and layers; P = positions "
    "that reach the decoder (the masked ones with sparse prediction, all T for hf-bert); no FLOPs for "
    "elementwise ops, norms, softmax or the embedding lookup."
)
CEILING_NOTE = (
    "TFLOP/s of the same step's matrix products (FLOPs above) run alone as bare torch.matmul calls in the "
    "step's precision, each shape timed back to back, interleaved with the steps; matmul eff.: TFLOP/s over "
    "the ceiling, the share of the step its matmuls alone would take (the rest: norms, activations, softmax, "
    "casts, the optimiser, overheads)."
)


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


@dataclass(frozen=True)
class Gemm:
    """One matrix product: (batch, m, k) @ (batch, k, n)."""

    m: int
    k: int
    n: int
    batch: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def linear_gemms(tokens: int, fan_in: int, fan_out: int) -> list[Gemm]:
    """x W^T for `tokens` rows: forward, then backward's input gradient and weight gradient."""
    return [Gemm(tokens, fan_in, fan_out), Gemm(tokens, fan_out, fan_in), Gemm(fan_out, tokens, fan_in)]


def attention_gemms(batch: int, cfg: ArchConfig) -> list[Gemm]:
    """One layer's Q K^T and A V over all heads, and backward's four products (dV, dA, dQ, dK)."""
    T, dk, BH = cfg.seq_len, cfg.width // cfg.heads, batch * cfg.heads
    return (
        [Gemm(T, dk, T, BH), Gemm(T, T, dk, BH)] + [Gemm(T, T, dk, BH), Gemm(T, dk, T, BH)] + 2 * [Gemm(T, T, dk, BH)]
    )


def matrices(module: nn.Module) -> list[tuple[int, int]]:
    """(out, in) of every matrix in `module`: in the blocks every one of them is a per-token matmul."""
    return [tuple(p.shape) for p in module.parameters() if p.ndim == 2]


def step_gemms(cfg: ArchConfig, batch: int, token_matrices: list[tuple[int, int]], predicted: int) -> Counter:
    """The matrix products of one training step (see FLOP_FORMULA), counted: every matrix that every token passes
    through, attention in every layer, and the decoder at `predicted` positions per row."""
    gemms: Counter = Counter()
    for fan_out, fan_in in token_matrices:
        gemms.update(linear_gemms(batch * cfg.seq_len, fan_in, fan_out))
    for _ in range(cfg.depth):
        gemms.update(attention_gemms(batch, cfg))
    gemms.update(linear_gemms(batch * predicted, cfg.width, cfg.vocab_size))
    return gemms


def gemm_flops(gemms: Counter) -> float:
    return float(sum(g.flops * count for g, count in gemms.items()))


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
    gemms: Counter  # the matrix products of one training step (step_gemms)
    runner: CompiledModule | None = None  # what runs: compiled (with its eager fallback) or eager
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    @property
    def flops(self) -> float:
        """Matmul FLOPs of one training step."""
        return gemm_flops(self.gemms)

    @property
    def compiled(self) -> bool:
        return self.runner is not None and self.runner.compiled

    def step(self, dtype: torch.dtype | None, device: torch.device) -> None:
        self.runner.run(self._step, dtype, device)

    def compile(self, enabled: bool) -> None:
        """Run under torch.compile (falling back to eager, gradients dropped, if compiling fails)."""
        self.runner = CompiledModule(
            self.eager, enabled, self.name, reset=lambda: self.optimizer.zero_grad(set_to_none=True)
        )

    def _step(self, model: nn.Module, dtype: torch.dtype | None, device: torch.device) -> None:
        with autocast(device, dtype):
            loss = self.loss(model)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Weights and optimiser state: what stays allocated between steps (gradients are set to None)."""
        tensors = list(self.eager.parameters()) + [
            t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)
        ]
        return sum(t.numel() * t.element_size() for t in tensors)


def block_contender(name: str, cfg: ArchConfig, data: Batch, device: torch.device) -> Contender:
    spec, recipe = block_spec(name), block_recipe(name)
    with torch.device(device):
        model = MaskedLM(cfg, name).train()  # dropout is 0 in pretraining, so train() == eval() here
    return Contender(
        name=name,
        title=spec.title,
        eager=model,
        loss=lambda m: m(data.input_ids, data.positions, data.labels),
        optimizer=make_optimizer(model, recipe.lr, recipe.weight_decay, device=device),
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
    recipe = block_recipe(BASELINE)
    # Per token: the blocks' matrices and the MLM head's dense transform; the decoder runs at all T positions.
    token_matrices = matrices(model.bert.encoder) + matrices(model.cls.predictions.transform)
    return Contender(
        name="hf-bert",
        title="Hugging Face BERT",
        eager=model,
        loss=lambda m: m(input_ids=data.input_ids, labels=labels).loss,
        optimizer=make_optimizer(model, recipe.lr, recipe.weight_decay, device=device),
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


class Ceiling:
    """The matmul ceiling: the matrix products of every contender's step (`Contender.gemms`), timed as bare
    `torch.matmul` calls on random operands in the step's precision. Each distinct shape runs back to back as often
    as a step runs it at most, and is timed per call; a row's ceiling is the time its step's products take this
    way, so achieved FLOP/s over the ceiling's FLOP/s ("matmul efficiency") is the share of the step the matmuls
    would need on their own. It is timed round by round with the contenders, so drift hits both alike."""

    def __init__(self, contenders: list[Contender], dtype: torch.dtype | None, device: torch.device, seed: int):
        self.repeats: dict[Gemm, int] = {}
        for c in contenders:
            for g, count in c.gemms.items():
                self.repeats[g] = max(self.repeats.get(g, 0), count)
        g = torch.Generator(device).manual_seed(seed)
        dtype = dtype or torch.float32

        def operand(batch: int, rows: int, cols: int) -> Tensor:
            shape = (rows, cols) if batch == 1 else (batch, rows, cols)
            return torch.randn(shape, generator=g, device=device, dtype=dtype)

        self.operands = {
            gemm: (operand(gemm.batch, gemm.m, gemm.k), operand(gemm.batch, gemm.k, gemm.n)) for gemm in self.repeats
        }
        self.times: dict[Gemm, list[float]] = {gemm: [] for gemm in self.repeats}

    def time_round(self, device: torch.device, keep: bool) -> None:
        cuda = device.type == "cuda"
        for gemm, (a, b) in self.operands.items():
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(self.repeats[gemm]):
                torch.matmul(a, b)
            if cuda:
                torch.cuda.synchronize(device)
            if keep:
                self.times[gemm].append((time.perf_counter() - start) / self.repeats[gemm])

    def seconds(self, gemms: Counter) -> float:
        """The bare-matmul time of one step's products: sum over shapes of count x median seconds per call."""
        return sum(count * statistics.median(self.times[g]) for g, count in gemms.items())

    def shapes(self) -> list[dict]:
        """Per distinct shape: its size, calls timed back to back, median seconds and TFLOP/s per call."""
        rows = []
        for g, times in self.times.items():
            median = statistics.median(times)
            rows.append(
                {
                    "batch": g.batch,
                    "m": g.m,
                    "k": g.k,
                    "n": g.n,
                    "repeats": self.repeats[g],
                    "s_median": median,
                    "tflops": g.flops / median / 1e12,
                }
            )
        return rows


def time_rounds(
    contenders: list[Contender],
    warmup: int,
    steps: int,
    dtype: torch.dtype | None,
    device: torch.device,
    ceiling: Ceiling | None = None,
) -> None:
    """Round r: one step of every contender (and one pass of the ceiling's products), the order rotated by r.
    Rounds before `warmup` are not kept."""
    progress = Progress(warmup + steps, "bench", unit="round", log_every=10.0, file=sys.stderr)
    gc.collect()
    entries: list = contenders + ([ceiling] if ceiling is not None else [])
    for r in range(warmup + steps):
        k = r % len(entries)
        for c in entries[k:] + entries[:k]:
            if c is ceiling:
                ceiling.time_round(device, keep=r >= warmup)
                continue
            seconds, peak_bytes = timed_step(c, dtype, device)
            if r >= warmup:
                c.times.append(seconds)
                c.peak_bytes = max(c.peak_bytes, peak_bytes)
        progress.update(r + 1, phase="warm-up" if r < warmup else "timed")
    progress.close()


# ----------------------------------------------------------------------------------------------- results


def result_row(
    c: Contender, tokens_per_step: int, peak: float | None, paper: dict[str, float], ceiling_s: float
) -> dict:
    """One row of the table; `ceiling_s`: the step's matrix products alone (`Ceiling.seconds`)."""
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
        "ceiling_s": ceiling_s,  # the step's matrix products alone, as bare matmuls (Ceiling)
        "ceiling_tflops": c.flops / ceiling_s / 1e12,
        "matmul_efficiency": ceiling_s / median,  # achieved TFLOP/s over the ceiling's
        "mfu": tflops / peak if peak else None,
        "compiled": c.compiled,
    }


def render(result: dict) -> str:
    s = result["settings"]
    cuda = result["device_type"] == "cuda"
    columns: dict[str, Callable[[dict], str]] = {
        "block": lambda r: r["title"],
        "params": lambda r: f"{r['params'] / 1e6:.1f}M",
        "steps/s": lambda r: f"{r['steps_per_s']:.3g}",
        "tokens/s": lambda r: f"{r['tokens_per_s']:,.0f}",
        f"vs {BASELINE}": lambda r: f"{r['ratio_vs_preln']:.2f}",
        "paper": lambda r: "-" if r["paper_ratio"] is None else f"{r['paper_ratio']:.2f}",
        "spread": lambda r: f"{r['step_s_iqr_pct']:.0f}%",
        "peak MB": lambda r: f"{r['peak_mem_mb']:,.0f}",
        "TFLOP/s": lambda r: f"{r['tflops']:.3g}",
        "ceiling": lambda r: f"{r['ceiling_tflops']:.3g}",
        "matmul eff.": lambda r: f"{100 * r['matmul_efficiency']:.0f}%",
    }
    if cuda:
        columns["MFU"] = lambda r: "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    lines = [
        f"# Training-step speed, {s['arch']}",
        "",
        markdown_table(list(columns), [[f(r) for f in columns.values()] for r in result["rows"]], left=["block"]),
        f"- device: {result['device']}; torch {result['environment']['torch']}; {s['threads']} CPU threads for "
        f"torch; {result['date']}",
        f"- batch {s['batch']} x {s['seq_len']} tokens ({s['masked']} masked per row), {s['warmup']} warm-up + "
        f"{s['steps']} timed "
        f"steps per block, interleaved round by round; precision {s['precision']}; compile {s['compile']}",
        "- step: forward with the MLM loss, backward, AdamW step (fused kernel), zero_grad; median over the timed "
        "steps. "
        "spread: interquartile range of the step times over the median (the machine's noise).",
        f"- vs {BASELINE}: tokens/s over {BASELINE}'s; paper: the speed column of He & Hofmann (2024) Table 1 "
        "(RTX 2080 Ti, 24 h budget).",
        f"- peak MB: {result['peak_mem_method']}",
        f"- {FLOP_FORMULA}",
        f"- ceiling: {CEILING_NOTE}",
    ]
    lines += [f"- {note}" for note in result["notes"]]
    if result.get("profile"):
        lines += ["", render_profiles(result["profile"], {r["name"]: r["title"] for r in result["rows"]}).rstrip()]
    return "\n".join(lines) + "\n"


def step_bench(
    arch: str | ArchConfig,
    names: list[str],
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    precision: str = "auto",
    compile: bool = False,
    peer: str | None = None,
    seed: int = 0,
    profile: int = 0,
) -> dict:
    """Time `names` (BASELINE first, always) and the optional peer round by round; the result as bench.json holds it.
    `profile`: after timing, profile that many steps of every row (`bench.profile`)."""
    with kernel_names() if profile else contextlib.nullcontext():
        return _step_bench(arch, names, batch, steps, warmup, device, precision, compile, peer, seed, profile)


def _step_bench(arch, names, batch, steps, warmup, device, precision, compile, peer, seed, profile) -> dict:
    cfg = arch if isinstance(arch, ArchConfig) else arch_config(arch)
    arch = cfg.preset if isinstance(arch, ArchConfig) else arch
    names = [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]
    dtype = autocast_dtype(device, precision)
    env, notes = environment(device), []
    seed_everything(seed)
    data = make_batch(cfg, batch, device, seed)
    contenders = [block_contender(name, cfg, data, device) for name in names]
    if peer == "hf":
        contenders.append(hf_contender(cfg, data, device))
        notes.append(
            "hf-bert: transformers BertForMaskedLM, same width, depth, heads, vocabulary and length, FFN width "
            f"{round(3 * cfg.glu_width / 4)} (parameters of our GLU), dropout 0 (we pretrain without dropout), "
            "SDPA attention, dense MLM head (decoder at every position), labels -100 except at the masked positions."
        )
    peak_method = count_cpu_memory(contenders, dtype, device)
    for c in contenders:
        c.compile(compile)
    ceiling = Ceiling(contenders, dtype, device, seed)

    time_rounds(contenders, warmup, steps, dtype, device, ceiling)

    if device.type == "cpu":
        for c in contenders:
            c.peak_bytes += c.state_bytes()
        notes.append(
            "process peak RSS (all models together): "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB"
        )
    peak = peak_tflops(env["device"]) if device.type == "cuda" else None
    if device.type == "cuda" and peak is None:
        notes.append(
            f"MFU omitted: no known dense bf16 peak for '{env['device']}' (known: "
            f"{', '.join(k for k, _ in PEAK_TFLOPS)})"
        )
    elif peak is not None:
        notes.append(f"MFU: achieved TFLOP/s over the device's dense bf16 peak, {peak:g} TFLOP/s")
    if compile and not all(c.compiled for c in contenders):
        notes.append("compile fell back to eager for: " + ", ".join(c.name for c in contenders if not c.compiled))

    paper = published_speeds()
    rows = [result_row(c, data.input_ids.numel(), peak, paper, ceiling.seconds(c.gemms)) for c in contenders]
    for r in rows:
        r["ratio_vs_preln"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    profiles = {}
    if profile:
        notes.append(f"profile: {profile} steps per row after timing, inductor's CPU kernels named (kernel profiling)")
        profiles = {c.name: profile_step(lambda c=c: c.step(dtype, device), profile, device) for c in contenders}
    return {
        "rows": rows,
        "profile": profiles,
        "device": env["device"],
        "device_type": device.type,
        "date": now_iso(),
        "settings": {
            "arch": arch,
            "batch": batch,
            "seq_len": cfg.seq_len,
            "masked": data.positions.shape[1],
            "steps": steps,
            "warmup": warmup,
            "compile": compile,
            "precision": precision_name(dtype),
            "threads": torch.get_num_threads(),
            "peer": peer,
            "seed": seed,
        },
        "peak_tflops": peak,
        "peak_mem_method": peak_method,
        "flop_formula": FLOP_FORMULA,
        "ceiling_note": CEILING_NOTE,
        "ceiling_shapes": ceiling.shapes(),
        "environment": env,
        "notes": notes,
    }


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
