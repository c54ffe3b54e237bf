"""cramming_simple/bench/results.py: the bench's report, with MFU on a GPU."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from cramming_simple.bench import (
    Contender,
    render,
    result_row,
)
from cramming_simple.bench.flops import Gemm


def test_gpu_report_shows_mfu():
    """The CUDA rendering path, without a GPU: MFU = achieved TFLOP/s over the device's peak."""
    model = torch.nn.Linear(4, 4)
    c = Contender(
        "preln",
        "Pre-LN",
        model,
        lambda m: m.weight.sum(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        gemms=Counter({Gemm(4945, 10**5, 5 * 10**4): 1}),  # 989e12 * 0.05 FLOPs
    )
    c.times, c.peak_bytes = [0.1, 0.1, 0.1], 2**30
    row = result_row(c, tokens_per_step=128 * 128, peak=989.0, paper={"preln": 1.0}, ceiling_s=0.08)
    assert row["tflops"] == pytest.approx(494.5) and row["mfu"] == pytest.approx(0.5) and row["peak_mem_mb"] == 1024
    assert row["ceiling_tflops"] == pytest.approx(618.125) and row["matmul_efficiency"] == pytest.approx(0.8)
    row["ratio_vs_preln"] = 1.0
    settings = {
        "arch": "crammed-bert",
        "batch": 128,
        "seq_len": 128,
        "masked": 32,
        "steps": 3,
        "warmup": 1,
        "compile": True,
        "precision": "bfloat16",
        "threads": 16,
    }
    md = render(
        {
            "rows": [row],
            "device": "NVIDIA H100 80GB HBM3",
            "device_type": "cuda",
            "date": "today",
            "settings": settings,
            "environment": {"torch": "2.x"},
            "peak_mem_method": "cuda",
            "notes": [],
        }
    )
    assert "| MFU |" in md and "| 50.0% |" in md and "494" in md and "| 80% |" in md
