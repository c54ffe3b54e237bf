"""Speed: the training-step bench of every block side by side, the calibration of Pre-LN's rate, FLOPs, the data bench.
Takes `model` and `train`'s `TrainStep`; gives bench.json / bench.md and hardware references to `report` and budgets.
"""

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
