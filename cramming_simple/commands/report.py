"""Tables and plots from run folders: Table 1 (GLUE average and its Welch interval against Pre-LN, parameters,
speed vs Pre-LN two ways, held-out MLM loss), Table 2 (GLUE per task, with Welch rows against Pre-LN),
Table 3 (paired bootstrap over validation examples) as Markdown, LaTeX and CSV; loss, schedule, GLUE,
GLUE-across-the-budget and inside-the-blocks figures as PNG and PDF; all tied together in index.md. GLUE
numbers are recomputed from the per-seed result files; runs that differ only in train.seed are one row.

  cramming-simple report                         every run under runs/
  cramming-simple report runs/preln-24h runs/sas-24h --out reports/sas
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ConfigError
from ..hardware import recorded_line
from ..reference import PAPER, reference_names
from ..report.build import write_report
from ..report.paired import REPLICATES
from ..runs import check_runs_dir, find_runs

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", nargs="*", metavar="RUN_DIR", type=Path, help="run folders (default: every run under --runs-dir)"
    )
    parser.add_argument(
        "--runs-dir", default="runs", type=Path, help="where to look for runs when no RUN_DIR is given (default: runs)"
    )
    parser.add_argument("--out", default="reports/latest", type=Path, help="output folder (default: reports/latest)")
    parser.add_argument(
        "--reference",
        default=PAPER,
        choices=[*reference_names(), "none"],
        help=f"published rows shown beside yours, with deltas (default: {PAPER})",
    )
    parser.add_argument(
        "--latex",
        default="full",
        choices=["full", "compact"],
        help="style of table*.tex: full (every column, as the Markdown) or compact (short headers, smaller type, "
        "published rows as a block of their own; fits a two-column table* / one column)",
    )
    parser.add_argument(
        "--latex-resize",
        action="store_true",
        help="wrap each LaTeX tabular in \\resizebox{\\linewidth}{!}{...} (needs graphicx)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=REPLICATES,
        metavar="N",
        help=f"replicates of Table 3's paired bootstrap (seeded; default: {REPLICATES})",
    )
    parser.add_argument(
        "--mixed-budgets",
        action="store_true",
        help="allow runs of different budget references (--reference, or none) in one table, with a footnote",
    )
    parser.add_argument(
        "--bench",
        type=Path,
        metavar="BENCH_JSON",
        help="a bench.json (`make bench`: reports/bench/bench.json): Table 1's speed footnote cites its side-by-side "
        "ratios to Pre-LN with their 95 %% intervals",
    )


def run(args: argparse.Namespace) -> int:
    run_dirs = args.run_dirs or find_runs(check_runs_dir(args.runs_dir))
    if not run_dirs:
        raise ConfigError(f"no runs under {args.runs_dir}/ (run `make pretrain` first, or name run folders)")
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap needs at least 100 replicates for a 95 % interval, got {args.bootstrap}")
    if args.bench is not None and not args.bench.is_file():
        raise ConfigError(f"--bench {args.bench}: no such file (make bench writes reports/bench/bench.json)")
    report = write_report(
        run_dirs,
        args.out,
        args.reference,
        args.bootstrap,
        args.latex,
        args.latex_resize,
        bench=args.bench,
        mixed_budgets=args.mixed_budgets,
    )
    for w in report.warnings:
        log.warning(w)
    for _, r in report.loaded.runs.iterrows():
        if isinstance(r.reference, dict):
            log.info(f"budget of {r['name']}: {recorded_line(r.reference, r.budget_hours)}")
    out = args.out
    log.info(f"report of {len(report.loaded.runs)} run(s) in {out}/")
    log.info("  tables: " + ", ".join(str(p) for paths in report.tables.values() for p in paths))
    log.info(
        "  plots:  " + (", ".join(f"{out / s}.png/.pdf" for s in report.figures) or "none (no metrics or GLUE results)")
    )
    log.info(f"  index:  {report.index}")
    return 0
