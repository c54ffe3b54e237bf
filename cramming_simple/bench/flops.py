"""The matrix products of one training step, counted (FLOPs, MFU), and the matmul ceiling: the same products run
alone as bare matmuls, timed with the steps (docs/speed.md)."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..model import ArchConfig

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


class Ceiling:
    """The matmul ceiling: the matrix products of every contender's step (`Contender.gemms`), timed as bare
    `torch.matmul` calls on random operands in the step's precision. Each distinct shape runs back to back as often
    as a step runs it at most, and is timed per call; a row's ceiling is the time its step's products take this
    way, so achieved FLOP/s over the ceiling's FLOP/s ("matmul efficiency") is the share of the step the matmuls
    would need on their own. It is timed round by round with the contenders, so drift hits both alike."""

    def __init__(self, contenders: list, dtype: torch.dtype | None, device: torch.device, seed: int):
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
