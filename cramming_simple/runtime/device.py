"""Where and how a model runs: the device, precision and autocast, torch.compile with its eager fallback,
seeds and RNG state, and the environment a result was measured on.

torchtitan-style: a model is built plain, then these execution concerns are applied to it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the local CUDA device when there is one (LOCAL_RANK under torchrun), else CPU. A CPU run also
    keeps freed memory for reuse (`keep_freed_memory`): every run path picks its device here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        keep_freed_memory()
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "impl.device=cuda, but torch sees no CUDA device here (a CPU build of torch, or no GPU): use "
                "impl.device=auto or cpu"
            )
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (x86 AVX-512 BF16 or AMX, Arm BF16); without it bf16
    is emulated and slower than fp32. Asked of torch's own CPU feature checks."""
    cpu = torch.cpu
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        if getattr(cpu, check, lambda: False)():
            return True
    if platform.machine() in ("aarch64", "arm64"):
        with contextlib.suppress(OSError):
            features = Path("/proc/cpuinfo").read_text()
            return any(line.startswith("Features") and " bf16" in line for line in features.splitlines())
    return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype; None means no autocast. 'auto' is bf16 on CUDA and on CPUs with native bf16
    (`cpu_has_bf16`), full fp32 on other CPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """How results name an autocast dtype: bf16, fp16 or fp32 (no autocast)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of giving it back to the kernel (CPU runs).

    A CPU training step frees and re-allocates the same large tensors every step. By default glibc serves each
    one (> 32 MiB at most) with a fresh mmap and unmaps it when freed, so every step page-faults its whole
    working set again: measured on a 2-core CPU, a crammed-bert step at batch 8 spent 0.4 s of 1.5 s in the
    kernel (227k page faults per step); with this, none, and the step was 22 % faster. The price: the
    process's resident memory stays at its peak. Returns whether it applied (glibc only); idempotent.
    """
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_default(device: str | torch.device) -> bool:
    """Whether to compile when not told: on for CUDA (where inductor pays off), off for CPU."""
    kind = device.type if isinstance(device, torch.device) else device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return kind == "cuda"


# Inductor options on CPU. No pattern matcher: it rewrites the CPU attention path (`model.layers.attend`: two
# batched matmuls around a softmax) back into SDPA, whose CPU kernel is 2-5x slower in bf16. Measured on a 2-core
# CPU, bf16, batch 8 x 128: a Pre-LN crammed-bert step 1.14 s with it, 0.90 s without; SAS-P 0.78 s either way.
CPU_COMPILE_OPTIONS = {"pattern_matcher": False}


def compile_model(model: torch.nn.Module, enabled: bool, **kwargs: Any) -> tuple[torch.nn.Module, bool]:
    """torch.compile when enabled; if wrapping fails, warn and return the eager model. (The first call can
    still fail: `CompiledModule` handles that.)"""
    if not enabled:
        return model, False
    if any(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("options", CPU_COMPILE_OPTIONS)
    try:
        return torch.compile(model, **kwargs), True
    except Exception as err:  # noqa: BLE001 - any compile failure means: run eager
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eager", stacklevel=2)
        return model, False


class CompiledModule:
    """A module under torch.compile that falls back to eager once, if compiling fails: when wrapping, or at the
    first call, where inductor really compiles forward and backward. Every user of compile goes through it."""

    def __init__(
        self, eager: torch.nn.Module, enabled: bool, name: str = "model", reset: Callable[[], None] | None = None
    ):
        """`reset`: called after a failed first call, before the eager retry (e.g. drop half-made gradients)."""
        self.eager, self.name, self.reset = eager, name, reset
        self.module, self.compiled = compile_model(eager, enabled)
        self.unproven = self.compiled  # the first call has yet to show that the compiled module runs

    def run(self, step: Callable[..., Any], *args: Any) -> Any:
        """`step(module, *args)` with the module that runs (no closure per call: this is the training step's
        path). If the first call of the compiled module fails: warn, reset, and do the step eagerly from then on."""
        if not self.unproven:
            return step(self.module, *args)
        try:
            return step(self.module, *args)
        except Exception as err:  # noqa: BLE001 - any compile failure means: run eager
            warnings.warn(
                f"{self.name}: torch.compile failed at the first step ({type(err).__name__}: {str(err)[:300]}); "
                "running eager",
                stacklevel=2,
            )
            self.module, self.compiled = self.eager, False
            if self.reset is not None:
                self.reset()
            return step(self.module, *args)
        finally:
            self.unproven = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def slurm_job() -> dict | None:
    """The Slurm job a process runs in (None outside Slurm): its id, partition, node, and how often Slurm requeued
    it (SLURM_RESTART_COUNT: preemptions and time limits). Recorded in every run's summary."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {
        "job_id": f"{array[0]}_{array[1]}" if all(array) else env["SLURM_JOB_ID"],  # as squeue and sacct name it
        "partition": env.get("SLURM_JOB_PARTITION"),
        "node": env.get("SLURMD_NODENAME") or platform.node(),
        "restarts": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
    }


def environment(device: torch.device) -> dict:
    """What a result was measured on: recorded in every summary, shown in every report."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_bf16": cpu_has_bf16(),  # what precision=auto means on a CPU
    }
