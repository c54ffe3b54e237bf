"""Pretrain one block for a wall-clock budget into runs/<name>/ (resumable).

Examples:
  cramming-simple pretrain --block sas --budget 24h
  cramming-simple pretrain --block preln --budget smoke hours=0.01 train.microbatch=16
  cramming-simple pretrain --block sas --budget 24h --reference rtx3090-notrainnogain   # 24 h of an RTX 3090
  torchrun --nproc_per_node=8 -m cramming_simple pretrain --block sasp --budget 24h
One process per run folder: a second start on the same folder exits with code 2 naming the PID that holds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import require
from ..errors import ConfigError
from ..model import BLOCKS
from ..presets import find_preset, list_presets
from ..runs import CONFIG, check_runs_dir, has_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--block",
        help=f"one of {', '.join(BLOCKS)}, or your own: path/to/file.py:Class, package.module:Class, or a name an "
        "installed package registers (docs/your-block.md)",
    )
    p.add_argument(
        "--budget",
        help=f"a budgets/ preset ({', '.join(list_presets('budgets'))}) or a YAML path (default: 24h; a resumed run "
        "keeps its own)",
    )
    p.add_argument(
        "--reference",
        metavar="NAME|PATH",
        help="the budget's hours are hours on this reference device (hardware.yaml, your own from `calibrate --save`, "
        "or a YAML file): the run times Pre-LN here first and trains for the same amount of work (docs/recipe.md)",
    )
    p.add_argument(
        "--calibration-dir",
        metavar="DIR",
        help="with --reference: share one calibration per kind of device through DIR (what `sweep` and `make` pass: "
        "RUNS_DIR/.calibration), so that every run there gets the same hours",
    )
    p.add_argument("--runs-dir", default="runs", help="where run folders live (default: runs)")
    p.add_argument("--name", help="run folder name (default: <block>-<budget>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in runs/<name> if it exists (from its own config.yaml; the folder you name is the one "
        "that trains)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="move an existing runs/<name> aside (into runs/.restarted/, never deleted) and start the run over",
    )
    p.add_argument(
        "--resume-or-restart",
        action="store_true",
        help="--resume, and a folder of a run killed before its first checkpoint (nothing to resume) is moved aside "
        "as --restart does and the run starts over (what sweeps pass: a requeue never needs a human)",
    )
    p.add_argument(
        "--extend-budget",
        action="store_true",
        help="with --resume: accept overrides that change the recipe (hours=..., train.*), recorded in the run",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. hours=0.5 train.lr=2e-3 impl.compile=false",
    )


def resolve(args: argparse.Namespace):
    """The run's config: its saved config.yaml when resuming (named by its folder), else the budget preset;
    overrides on top."""
    from ..model import block_spec
    from ..train.config import PretrainConfig

    require(not (args.extend_budget and not args.resume), "--extend-budget goes with --resume")
    require(not (args.calibration_dir and not args.reference), "--calibration-dir goes with --reference")
    cfg = PretrainConfig.from_budget(args.budget or "24h", args.block, args.overrides, args.name, args.reference)
    run_dir = Path(args.runs_dir) / cfg.name
    if args.resume and not args.restart and has_checkpoint(run_dir):  # without one, pretrain says what to do
        asked = cfg.reference
        cfg = PretrainConfig.from_run(run_dir, args.overrides, extend_budget=args.extend_budget)
        if asked is not None and (cfg.reference is None or cfg.reference.name != asked.name):
            raise ConfigError(
                f"{run_dir / CONFIG} is a run of "
                + (f"reference {cfg.reference.name}" if cfg.reference else "plain hours (no --reference)")
                + f", not --reference {asked.name}: a resumed run keeps its budget (start a new run with --name)"
            )
        if args.block and block_spec(args.block).ref != cfg.block:
            raise ConfigError(f"{run_dir / CONFIG} is a run of block '{cfg.block}', not '{args.block}'")
        if args.budget and find_preset("budgets", args.budget).stem != cfg.budget:
            raise ConfigError(
                f"{run_dir / CONFIG} is a run of budget '{cfg.budget}', not '{args.budget}': a resumed run keeps its "
                "budget (start a new run with --name, or change hours= with --extend-budget)"
            )
    return cfg


def run(args: argparse.Namespace) -> int:
    import logging

    from ..config import to_yaml
    from ..errors import EXIT_FAILED, STOP_EXIT_CODES
    from ..train.budget import sized_data_note
    from ..train.loop import pretrain

    args.resume = args.resume or args.resume_or_restart
    if not args.block and not args.resume:
        raise ConfigError(f"--block is required: one of {', '.join(BLOCKS)}")
    check_runs_dir(args.runs_dir)
    cfg = resolve(args)
    logging.getLogger(__name__).debug("resolved config:\n%s", to_yaml(cfg).rstrip())
    note = sized_data_note(cfg)
    if note and not (Path(args.runs_dir) / cfg.name / CONFIG).exists():  # a new run says so once
        logging.getLogger(__name__).info(note)
    summary = pretrain(cfg, args.runs_dir, args.resume, args.restart, args.calibration_dir, args.resume_or_restart)
    return STOP_EXIT_CODES.get(summary.get("stop_reason") or "budget", EXIT_FAILED)
