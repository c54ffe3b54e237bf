"""Export a run's model as a Hugging Face folder with a model card, and optionally push it to the hub.

Examples:
  cramming-simple export runs/sas-24h --out exports/sas-24h
  cramming-simple export runs/sas-24h --glue mnli --out exports/sas-24h-mnli   (after glue --save-models)
  cramming-simple export runs/sas-24h --out exports/sas-24h --push-to-hub me/crammed-sas --private
The folder loads with transformers' Auto classes and pipelines (trust_remote_code=True where cramming-simple is
not installed); its README.md is the model card.
"""

from __future__ import annotations

import argparse
import logging

from ..config import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (with model/)")
    parser.add_argument("--out", required=True, help="the folder to write (new, empty, or an earlier export)")
    parser.add_argument(
        "--glue", metavar="TASK", help="export the model fine-tuned on this task (kept by `glue --save-models`)"
    )
    parser.add_argument(
        "--seed", type=int, help="with --glue: which seed's model (default: the best on the task's first column)"
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the folder to this hub repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    parser.add_argument(
        "--license", default="mit", help="the model card's license (a hub license id; default: mit, the harness's)"
    )


def run(args: argparse.Namespace) -> int:
    from ..hub.export import export
    from ..hub.push import check_hub, push

    if args.private and not args.push_to_hub:
        raise ConfigError("--private is for --push-to-hub")
    if args.seed is not None and not args.glue:
        raise ConfigError("--seed picks a fine-tuned model: use it with --glue TASK")
    if args.push_to_hub:
        check_hub()  # seconds, before any work
    folder = export(args.run_dir, args.out, task=args.glue, seed=args.seed, license=args.license)
    what = f"{args.run_dir} ({args.glue})" if args.glue else args.run_dir
    log.info(f"exported {what} to {folder} (model card: {folder}/README.md)")
    if args.push_to_hub:
        log.info(f"pushed to {push(folder, args.push_to_hub, private=args.private)}")
    return 0
