"""Pretrain one block for a wall-clock budget into runs/<name>/ (resumable).

Examples:
  cramming-simple pretrain --block sas --budget 24h
  cramming-simple pretrain --block preln --budget smoke hours=0.01 train.microbatch=16
  torchrun --nproc_per_node=8 -m cramming_simple pretrain --block sasp --budget 24h
One process per run folder: a second start on the same folder exits with code 2 naming the PID that holds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..model import BLOCKS
from ..presets import list_presets
from ..runs import CONFIG


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--block",
        help=f"one of {', '.join(BLOCKS)}, or your own: path/to/file.py:Class, package.module:Class, or a name an "
        "installed package registers (docs/your-block.md)",
    )
    p.add_argument(
        "--budget", default="24h", help=f"a budgets/ preset ({', '.join(list_presets('budgets'))}) or a YAML path"
    )
    p.add_argument("--runs-dir", default="runs", help="where run folders live (default: runs)")
    p.add_argument("--name", help="run folder name (default: <block>-<budget>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in runs/<name> if it exists (from its own config.yaml)"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. hours=0.5 train.lr=2e-3 impl.compile=false",
    )


def resolve(args: argparse.Namespace):
    """The run's config: its saved config.yaml when resuming, else the budget preset; overrides on top."""
    from ..model import block_spec
    from ..train.config import PretrainConfig

    cfg = PretrainConfig.from_budget(args.budget, args.block, args.overrides, args.name)
    run_dir = Path(args.runs_dir) / cfg.name
    if args.resume and (run_dir / CONFIG).exists():
        cfg = PretrainConfig.from_run(run_dir, args.overrides)
        if args.block and block_spec(args.block).ref != cfg.block:
            raise ConfigError(f"{run_dir / CONFIG} is a run of block '{cfg.block}', not '{args.block}'")
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..train.loop import EXIT_CODES, pretrain

    if not args.block and not args.resume:
        raise ConfigError(f"--block is required: one of {', '.join(BLOCKS)}")
    import logging

    from ..config import to_yaml

    cfg = resolve(args)
    logging.getLogger(__name__).debug("resolved config:\n%s", to_yaml(cfg).rstrip())
    summary = pretrain(cfg, args.runs_dir, resume=args.resume)
    return EXIT_CODES.get(summary.get("stop_reason") or "budget", 1)
