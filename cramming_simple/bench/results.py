"""The bench's results: one row per contender (timings, FLOP rates, the paired ratio to Pre-LN with its interval)
and bench.md."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Callable

from ..markdown import table as markdown_table
from ..reference import BASELINE, published_speeds
from .flops import CEILING_NOTE, FLOP_FORMULA, Ceiling
from .intervals import estimates
from .profile import render_profiles

if TYPE_CHECKING:
    from .step import Contender

RATIO_NOTE = (
    "vs {base}: the median over rounds of the paired ratio {base}'s step time / the row's step time (the two timed "
    "in one round, close together), with its bootstrap 95 % interval over rounds (docs/speed.md); > 1: faster than "
    "{base}. tokens/s: at the median step time."
)


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


def ratio_cell(r: dict) -> str:
    """The paired ratio with its interval (older bench.json files: the ratio of median tokens/s)."""
    if r.get("paired_ratio") is None:
        return f"{r['ratio_vs_preln']:.2f}"
    if r["paired_half_width"] == 0.0:
        return f"{r['paired_ratio']:.2f}"
    return f"{r['paired_ratio']:.2f} [{r['paired_low']:.2f}, {r['paired_high']:.2f}]"


def rounds_text(s: dict) -> str:
    """How the number of rounds was decided (older bench.json files: not recorded)."""
    stopped = s.get("stopped_by")
    if stopped is None or stopped == "rounds":
        return ""
    cap = f"{s['max_seconds']:g} s" if s.get("max_seconds") else "none"
    why = {"target": "every interval reached the target", "time cap": "the time cap came first"}[stopped]
    return (
        f"; rounds added until every vs-{BASELINE} 95 % interval's half-width was below {s['precision_target']:g} "
        f"(at least {s['min_steps']}, time cap {cap}): {why}"
    )


def render(result: dict) -> str:
    s = result["settings"]
    cuda = result["device_type"] == "cuda"
    columns: dict[str, Callable[[dict], str]] = {
        "block": lambda r: r["title"],
        "params": lambda r: f"{r['params'] / 1e6:.1f}M",
        "steps/s": lambda r: f"{r['steps_per_s']:.3g}",
        "tokens/s": lambda r: f"{r['tokens_per_s']:,.0f}",
        f"vs {BASELINE}": ratio_cell,
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
        f"steps per block, interleaved round by round; precision {s['precision']}; compile {s['compile']}"
        + rounds_text(s),
        "- step: the trainer's own step (train.step.TrainStep): forward with the MLM loss under autocast, backward "
        "through the GradScaler, gradient clipping, AdamW step (fused kernel), zero_grad; median over the timed steps. "
        "spread: interquartile range of the step times over the median (the machine's noise).",
        f"- {RATIO_NOTE.format(base=BASELINE)} paper: the speed column of He & Hofmann (2024) Table 1 "
        "(RTX 2080 Ti, 24 h budget).",
        f"- peak MB: {result['peak_mem_method']}",
        f"- {FLOP_FORMULA}",
        f"- ceiling: {CEILING_NOTE}",
    ]
    lines += [f"- {note}" for note in result["notes"]]
    if result.get("profile"):
        lines += ["", render_profiles(result["profile"], {r["name"]: r["title"] for r in result["rows"]}).rstrip()]
    return "\n".join(lines) + "\n"


def result_rows(contenders: list[Contender], tokens: int, peak: float | None, ceiling: Ceiling, seed: int) -> list:
    """The table's rows: each contender's timings, its ratio to the first (BASELINE) with the paired interval."""
    paper = published_speeds()
    rows = [result_row(c, tokens, peak, paper, ceiling.seconds(c.gemms)) for c in contenders]
    paired = estimates({c.name: c.times for c in contenders}, contenders[0].name, seed)
    for r in rows:
        r["ratio_vs_preln"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]  # of the median step times
        e = paired[r["name"]]
        r.update(paired_ratio=e["ratio"], paired_low=e["low"], paired_high=e["high"], paired_half_width=e["half_width"])
    return rows
