"""Where a training step's time goes: `bench --profile` runs torch.profiler over a few steps of each row after
timing, groups the operators' own (self) time into kinds, and lists the largest operators.

Kinds, by operator name: matmul (mm, bmm, addmm, baddbmm), SDPA attention kernels, the optimiser (fused AdamW,
foreach ops), compiled kernels (inductor's fused kernels: norms, activations, residual adds, softmax, casts;
on CPU named one by one, on GPU Triton kernels), and everything else (eager elementwise ops, copies, fills,
the framework's own overhead). On CUDA the device time is counted, on CPU the CPU time.
"""

from __future__ import annotations

import contextlib
import resource

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from ..markdown import table as markdown_table

MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")  # CPU: the aten ops, by exact name
MATMUL_KERNELS = ("gemm", "gemv", "nvjet", "cutlass", "xmma")  # CUDA: substrings of the kernels' names
KINDS = {  # substrings of operator names (CPU: aten ops and inductor's kernels; CUDA: the kernels themselves)
    "attention (SDPA)": ("scaled_dot_product", "flash", "fmha", "attention"),
    "optimiser": ("adam", "_foreach", "multi_tensor_apply"),
    "compiled kernels": ("graph_", "cpp_fused", "triton_", "CompiledFxGraph"),
}
KIND_NAMES = ("matmul", *KINDS)
TOP = 12  # operators listed per row


def kind_of(name: str) -> str:
    """The kind of an operator or kernel, by name. Compiled kernels first: their names include the ops they
    fuse ('cpp_fused__softmax_...'); matmul ops by exact name (aten::mm, not glue such as aten::mm_backward)."""
    if any(key in name for key in KINDS["compiled kernels"]):
        return "compiled kernels"
    if name in MATMUL_OPS or (not name.startswith("aten::") and any(key in name for key in MATMUL_KERNELS)):
        return "matmul"
    for kind in ("attention (SDPA)", "optimiser"):
        if any(key in name.lower() for key in KINDS[kind]):
            return kind
    return "other"


@contextlib.contextmanager
def kernel_names():
    """Name inductor's CPU kernels in the profile (otherwise they hide in the compiled graph's own time)."""
    try:
        import torch._inductor.config as inductor
    except Exception:  # noqa: BLE001 - no inductor: nothing to name
        yield
        return
    with inductor.patch({"cpp.enable_kernel_profile": True}):
        yield


def profile_step(step, steps: int, device: torch.device) -> dict:
    """Profile `steps` calls of `step()` after one profiled but discarded call (the profiler's own buffers grow
    there, not in the measured steps); per step: total self time, time per kind, the largest operators, and on
    CPU the page faults of the measured steps (they slow whichever kernel first touches new memory)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    faults, events = 0, []
    ready = lambda prof: events.extend(prof.key_averages())  # noqa: E731 - called once, when the steps are done
    with profile(
        activities=activities, schedule=schedule(wait=0, warmup=1, active=steps), on_trace_ready=ready
    ) as prof:
        for i in range(steps + 1):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            if cuda:
                torch.cuda.synchronize(device)
            if i > 0:
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            prof.step()
    ops = []
    for e in events:
        # CUDA: the kernels' own events (an op's device time is its kernels': counting both would count twice)
        if cuda and e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        if us > 0:
            ops.append({"name": e.key, "kind": kind_of(e.key), "ms": us / 1000 / steps, "calls": e.count // steps})
    total = sum(op["ms"] for op in ops)
    kinds = {kind: 0.0 for kind in [*KIND_NAMES, "other"]}
    for op in ops:
        kinds[op["kind"]] += op["ms"]
    ops.sort(key=lambda op: -op["ms"])
    return {
        "ms_per_step": total,
        "clock": "device (CUDA kernels)" if cuda else "CPU (self time of every operator)",
        "page_faults_per_step": faults / steps,
        "kinds": {k: {"ms": ms, "share": ms / total if total else 0.0} for k, ms in kinds.items()},
        "top": [dict(op, share=op["ms"] / total) for op in ops[:TOP]],
    }


def render_profiles(profiles: dict[str, dict], titles: dict[str, str]) -> str:
    """Markdown: one table of kinds (a column per row of the bench), then each row's largest operators."""
    names = list(profiles)
    kinds = list(next(iter(profiles.values()))["kinds"])
    rows = [
        [kind] + [f"{p['kinds'][kind]['ms']:.1f} ({100 * p['kinds'][kind]['share']:.0f}%)" for p in profiles.values()]
        for kind in kinds
    ]
    rows.append(["total, ms per step"] + [f"{p['ms_per_step']:.1f}" for p in profiles.values()])
    lines = [
        "## Where a step's time goes (torch.profiler)",
        "",
        markdown_table(["kind"] + [titles[n] for n in names], rows, left=["kind"]),
        f"- clock: {next(iter(profiles.values()))['clock']}; ms per step, share of the step's total; one profiled "
        "step before the measured ones is discarded",
        "- page faults per measured step: "
        + ", ".join(f"{titles[n]} {p['page_faults_per_step']:,.0f}" for n, p in profiles.items())
        + " (each costs the kernel that first touches the page)",
    ]
    for name, p in profiles.items():
        lines += ["", f"### {titles[name]}: largest operators", ""]
        lines.append(
            markdown_table(
                ["operator", "kind", "ms per step", "share", "calls per step"],
                [
                    [o["name"][:90], o["kind"], f"{o['ms']:.1f}", f"{100 * o['share']:.1f}%", str(o["calls"])]
                    for o in p["top"]
                ],
                left=["operator", "kind"],
            )
        )
    return "\n".join(lines) + "\n"
