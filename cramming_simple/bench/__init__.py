"""Speed: the training-step bench (every block side by side, `step`) and the data-path bench (`data`)."""

from .flops import peak_tflops
from .results import render, result_row
from .step import (
    COMPILE_WARMUP,
    DEFAULTS,
    Contender,
    Rounds,
    block_contender,
    hf_config,
    hf_contender,
    make_batch,
    step_bench,
)

__all__ = [
    "COMPILE_WARMUP",
    "DEFAULTS",
    "Contender",
    "block_contender",
    "hf_config",
    "hf_contender",
    "make_batch",
    "peak_tflops",
    "Rounds",
    "render",
    "result_row",
    "step_bench",
]
