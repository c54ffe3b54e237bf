"""Pretrain every (block, seed) of a budget, fine-tune each run on GLUE, and report: here (`--launcher local`,
one job at a time) or as Slurm jobs through submitit (`--launcher slurm`), each GLUE job waiting for its run.
Resubmitting a sweep redoes only what is missing; `--status` shows where every job stands.

  cramming-simple sweep --blocks preln,sas,sasp --seeds 0,1,2 --budget 24h --launcher slurm \\
      --slurm partition=gpu --slurm gpus_per_node=1 --slurm constraint=a100 --slurm time=1500
  cramming-simple sweep --blocks preln,sas --seeds 0 --budget smoke --protocol smoke --tasks rte
  cramming-simple sweep --status runs          # the sweep last launched into runs/, job by job
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocks", help="comma list of blocks (names, file.py:Class, module:Class)")
    parser.add_argument("--seeds", default="0", help="comma list of pretraining seeds (train.seed), default 0")
    parser.add_argument("--budget", default="24h", help="the budget every run pretrains for (default 24h)")
    parser.add_argument(
        "--reference",
        metavar="NAME|PATH",
        help="the budget's hours are hours on this reference device (pretrain --reference): calibrated once per kind "
        "of device in RUNS_DIR/.calibration/, so that every run gets the same hours",
    )
    parser.add_argument("--protocol", default="paper", help="GLUE protocol (default paper)")
    parser.add_argument("--tasks", default="all", help="GLUE tasks: 'all' or a comma list")
    parser.add_argument("--data-dir", help="local GLUE data (parquet or TSV layout); default: the hub")
    parser.add_argument("--runs-dir", default="runs", type=Path, help="where the runs go (default runs)")
    parser.add_argument("--out", type=Path, help="the report's folder (default RUNS_DIR/report)")
    parser.add_argument("--launcher", default="local", choices=["local", "slurm"])
    parser.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Slurm option through submitit, e.g. partition=gpu, gpus_per_node=1, constraint=a100, time=1500 "
        "(minutes), account=..., qos=..., exclusive=true, srun_args='--cpu-bind=none', setup='module load cuda' "
        "(repeatable), python=..., additional_parameters.NAME=VALUE (any #SBATCH --NAME); for one kind of job "
        "only: pretrain.nodes=2, glue.time=240, report.partition=cpu; repeat for several (README, On a cluster)",
    )
    parser.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="with slurm: at most N of the sweep's jobs at once, pretraining and GLUE together (N lanes, each a "
        "Slurm singleton; jobs still queued from an earlier launch into RUNS_DIR count too); default: no cap",
    )
    parser.add_argument("--glue", action="append", default=[], metavar="KEY=VALUE", help="a GLUE protocol override")
    parser.add_argument("--wait", action="store_true", help="with slurm: block until every job ended; 1 if any failed")
    parser.add_argument(
        "--status",
        nargs="?",
        const=True,
        metavar="RUNS_DIR",
        help="show where every job stands and exit: of the sweep last launched into RUNS_DIR, or of the one the "
        "other arguments describe",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="pretraining overrides, e.g. hours=0.5")


def run(args: argparse.Namespace) -> int:
    from ..sweep import SweepConfig, last_sweep, launch, plan
    from ..sweep.options import SlurmOptions

    slurm = SlurmOptions.parse(args.slurm)
    if args.status is not None and not args.blocks:
        return show_status(last_sweep(Path(args.status) if args.status is not True else args.runs_dir))
    if not args.blocks:
        raise ConfigError("--blocks is required (or --status RUNS_DIR, for a sweep launched before)")
    cfg = SweepConfig(
        blocks=[b.strip() for b in args.blocks.split(",") if b.strip()],
        seeds=seeds(args.seeds),
        budget=args.budget,
        runs_dir=Path(args.status) if isinstance(args.status, str) else args.runs_dir,
        protocol=args.protocol,
        tasks=args.tasks,
        data_dir=args.data_dir,
        overrides=list(args.overrides),
        glue_args=list(args.glue),
        out=args.out,
        reference=args.reference,
        max_parallel=args.max_parallel,
    )
    if args.status is not None:
        return show_status(cfg)
    if args.slurm and args.launcher != "slurm":
        raise ConfigError("--slurm options are for --launcher slurm")
    cfg.validate()  # before the data is prepared: a typo fails in a second
    if args.max_parallel is not None and args.launcher != "slurm":
        raise ConfigError("--max-parallel is for --launcher slurm (the local launcher runs one job at a time)")
    if args.max_parallel is not None and slurm.has("array_parallelism"):
        raise ConfigError("give --max-parallel (the whole sweep) or --slurm array_parallelism= (each array), not both")
    prepare_data(cfg)
    return launch(cfg, plan(cfg), args.launcher, slurm, args.wait)


def seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes a comma list of integers, e.g. 0,1,2; got {text!r}") from None


def show_status(cfg) -> int:
    from ..markdown import table
    from ..sweep import status

    rows = status(cfg)
    columns = ["job", "kind", "state", "detail", "log"]
    print(table(columns, [[r["name"], r["kind"], r["state"], r["detail"], r["logs"]] for r in rows], left=columns))
    return 0


def prepare_data(cfg) -> None:
    """The budget's data, prepared once before any job starts (every run reads the same preparation); and the
    GLUE tasks' data: from the hub, downloaded once into the datasets cache here rather than by every GLUE job
    at once; from --data-dir, checked, so that a missing file fails now, not in the GLUE jobs after pretraining."""
    from ..data import prepare
    from ..glue.data import open_source
    from ..glue.tasks import load_tasks
    from ..train.budget import sized_data_note
    from ..train.config import PretrainConfig

    budget = PretrainConfig.from_budget(cfg.budget, cfg.blocks[0], cfg.overrides, reference=cfg.reference)
    note = sized_data_note(budget)
    if note:
        log.info(note)
    prepare(budget.data, budget.arch.vocab_size, budget.arch.seq_len)
    table = load_tasks()
    open_source(cfg.data_dir, table, table.select(cfg.tasks))
