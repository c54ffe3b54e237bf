"""Fine-tune a pretrained run on GLUE under a fixed protocol (docs/recipe.md) and score it.

Results go to RUN_DIR/glue/<task>/seed<k>.json, one per task and seed, and RUN_DIR/glue/summary.json (the
nine GLUE columns and their average, mean +- std over seeds), rewritten after every task/seed. A rerun skips
the task/seed pairs already done with the same protocol and model; --force redoes them. Everything (model,
tokenizer, every task's data, pairs in use by another process) is checked before any training starts.

examples:
  cramming-simple glue runs/sas-24h
  cramming-simple glue --block sas --runs-dir runs --protocol cramming --tasks rte,mrpc --seeds 1 lr=2e-5
  cramming-simple glue runs/tiny-smoke --protocol smoke --data-dir ~/glue_data --gpus 2
  cramming-simple glue runs/sas-24h --at 0.5          # the snapshot model@0.50/ (impl.keep_at); results in glue@0.50/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import require
from ..presets import list_presets

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder with model/ in it (or use --block)")
    parser.add_argument(
        "--block",
        help="instead of RUN_DIR: the latest run of this block (a name, path/to/file.py:Class or module:Class) "
        "under --runs-dir",
    )
    parser.add_argument("--runs-dir", default="runs", help="where --block looks for runs (default: runs)")
    parser.add_argument(
        "--protocol",
        default="paper",
        help=f"protocol preset ({', '.join(p for p in list_presets('glue') if p != 'tasks')}) or a YAML path",
    )
    parser.add_argument("--tasks", default="all", help="'all' or a comma list, e.g. cola,sst2,mnli")
    parser.add_argument("--seeds", help="comma list of seeds; default: the protocol's (1,2,3)")
    parser.add_argument(
        "--data-dir",
        help="local GLUE data: the hub's parquet layout (DIR/cola/train-*.parquet) "
        "or the GLUE TSV distribution (DIR/CoLA/train.tsv); default: the hub",
    )
    parser.add_argument("--force", action="store_true", help="redo task/seed pairs that already have results")
    parser.add_argument(
        "--show-inputs",
        type=int,
        metavar="N",
        help="print each task's first N training inputs as the model gets them (tokens, special tokens visible) "
        "and exit before any training",
    )
    parser.add_argument(
        "--save-models",
        action="store_true",
        help="also keep each fine-tuned model, as glue/<task>/seed<k>.model/ (a Hugging Face folder; "
        "`cramming-simple export --glue TASK` publishes one); a pair with a result but no model runs again",
    )
    parser.add_argument(
        "--at",
        type=float,
        metavar="FRACTION",
        help="fine-tune the snapshot kept at this budget fraction (model@0.50/, from impl.keep_at) instead of "
        "the final model; results go to glue@0.50/",
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help="worker processes, one per GPU (on a machine without GPUs: CPU workers)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="protocol overrides, e.g. lr=1e-4 epochs=3; impl.tracker=tensorboard (or wandb, mlflow, a list) also "
        "sends every task's per-epoch metrics to that tracker",
    )


def run(args: argparse.Namespace) -> int:
    from ..glue.run import GlueRun
    from ..glue.run import run as run_glue

    if args.run_dir and "=" in args.run_dir and not Path(args.run_dir).exists():  # `glue --block sas lr=1e-4`
        args.overrides, args.run_dir = [args.run_dir, *args.overrides], None
    config = GlueRun.from_args(resolve_run(args), args)
    return run_glue(config, show_inputs=args.show_inputs)


def resolve_run(args: argparse.Namespace) -> Path:
    from ..model import block_spec
    from ..runs import check_runs_dir, latest_run

    if args.block:
        require(args.run_dir is None, "give either RUN_DIR or --block, not both")
        return latest_run(check_runs_dir(args.runs_dir), block_spec(args.block).ref)
    require(args.run_dir is not None, "give a run folder (RUN_DIR) or --block NAME [--runs-dir DIR]")
    return Path(args.run_dir)
