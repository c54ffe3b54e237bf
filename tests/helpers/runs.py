"""Run folders for the tests: a pretraining command line in a child process, metrics rows, report inputs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cramming_simple.cli import main
from cramming_simple.glue.tasks import COLUMNS

BASE = {  # per-run base scores in percent, in LABELS order; seed k scores base + OFFSET[k]
    "preln": [80, 81, 90, 86, 60, 88, 87, 88, 50],
    "sas": [79, 80, 91, 84, 58, 87, 86, 87, 52],
    "sasp": [78, 79, 92, 85, 61, 86, 85, 86, 51],
}

STEPS = {"preln": 800, "sas": 900, "sasp": 960}


def metrics(run: Path, kind: str = "train") -> list[dict]:
    """metrics.jsonl rows of one kind: training log windows (no "kind" key) or held-out evals ("kind": "eval")."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind", "train") == kind]


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cramming_simple", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kwargs,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


OFFSET = {1: 0.0, 2: 1.0, 3: 5.0}  # mean +2, sample std sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7)


def make_run(
    root,
    name,
    block,
    *,
    device="NVIDIA H100 80GB HBM3",
    budget="24h",
    hours=24.0,
    completed=True,
    fail=(),
    skip=(),
    glue=True,
    protocol_hash="p1",
    data_hash="abc",
    seeds=tuple(OFFSET),
):
    """A run folder as pretraining and GLUE write it. fail/skip: (task, seed) pairs that failed / never ran."""
    run = root / name
    (run / "glue").mkdir(parents=True)
    summary = {
        "name": name,
        "block": block,
        "budget": budget,
        "budget_hours": hours,
        "params": 120_000_000 if block == "preln" else 101_000_000,
        "microbatch": 128,
        "microbatch_steps": STEPS[block],
        "final_loss": 2.0 + STEPS[block] / 10_000,
        "device": device,
        "world_size": 1,
        "precision": "bf16",
        "data": {"source": "hub", "name": "pile", "hash": data_hash},
        "completed": completed,
        "stop_reason": "budget" if completed else "preempted",
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(
        f"name: {name}\nblock: {block}\nbudget: {budget}\nhours: {hours}\ndata:\n  source: hub\n  name: pile\n"
    )
    rows = [
        {
            "microbatch_steps": 10 * i,
            "elapsed_s": 60.0 * i,
            "p": i / 40,
            "lr": 1e-3 * min(0.25 + i / 40, 4 * (1 - i / 40)),
            "batch_size": 64 * (1 + i),
            "loss": 10.0 / (1 + i) + 2 + STEPS[block] / 1000,
        }
        for i in range(40)
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"microbatch_st'
    )  # last row cut short
    if not glue:
        return run
    for seed in seeds:
        shift, per_task = OFFSET[seed], {}
        for c, base in zip(COLUMNS, BASE[block]):
            per_task.setdefault(c.task, {}).setdefault(c.split, {})[c.metric] = (base + shift) / 100
        for task, metrics in per_task.items():
            if (task, seed) in skip:
                continue
            failed = (task, seed) in fail
            result = {
                "task": task,
                "seed": seed,
                "protocol": "paper",
                "protocol_hash": protocol_hash,
                "model_hash": f"m-{name}",
                "status": "failed" if failed else "ok",
                "reason": "non-finite loss" if failed else None,
                "metrics": {} if failed else metrics,
            }
            (run / "glue" / task).mkdir(exist_ok=True)
            (run / "glue" / task / f"seed{seed}.json").write_text(json.dumps(result))
    # A stale summary from an earlier GLUE job: the report must recompute, not read this.
    (run / "glue" / "summary.json").write_text(json.dumps({"glue_average": {"mean": 1.0, "std": 0.0, "n": 3}}))
    return run


def report(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["report", *argv])
    return code, out.getvalue(), err.getvalue()


def md_rows(text):
    """Markdown table rows (header first) as lists of cells."""
    lines = [line for line in text.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def tex_rows(text):
    """LaTeX tabular rows (header first), turned back into the Markdown spelling."""
    body = text.split(r"\toprule")[1].split(r"\bottomrule")[0]
    back = {r"$\pm$": "±", r"$\Delta$": "Δ", r"$-$": "-", r"\_": "_", r"\&": "&", r"\%": "%"}
    rows = []
    for line in body.strip().splitlines():
        if line.strip() == r"\midrule":
            continue
        assert line.endswith(r" \\")
        cells = re.split(r"(?<!\\) & ", line[:-3])  # an escaped \& is text, not a column break
        for k, v in back.items():
            cells = [c.replace(k, v) for c in cells]
        rows.append([re.sub(r"\\textsuperscript\{(\d+)\}", r" [\1]", c).strip() for c in cells])
    return rows


def latex_missing() -> str | None:
    if shutil.which("pdflatex") is None:
        return "pdflatex is not installed (apt install texlive-latex-base texlive-latex-recommended)"
    if not shutil.which("kpsewhich") or not all(
        subprocess.run(["kpsewhich", f], capture_output=True, text=True).stdout.strip()
        for f in ("booktabs.sty", "geometry.sty", "graphicx.sty")
    ):
        return "booktabs, geometry or graphicx is missing from the TeX installation"
    return None


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())
