"""`cramming-simple` (also `python -m cramming_simple`): one subcommand per stage.

Run commands take OmegaConf `key=value` overrides after their options, e.g.
`cramming-simple pretrain --block sas --budget 1h train.lr=2e-3 hours=0.5`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback

from . import __version__
from .errors import EXIT_CODES_HELP, EXIT_DISK_FULL, EXIT_INTERRUPTED, UserError, debug_enabled, is_disk_full


def cmd_params(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from .model import BLOCKS, MaskedLM, arch_config, count_params

    cfg = arch_config(args.arch)
    with torch.device("meta"):  # shapes only: no memory, no init time
        counts = {name: count_params(MaskedLM(cfg, name)) for name in BLOCKS}
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    table = pd.DataFrame(
        [
            {"block": name, "title": BLOCKS[name].title, "params": f"{c['params'] / 1e6:.2f}M", "non-embedding": f"{c['non_embedding'] / 1e6:.2f}M"}
            for name, c in counts.items()
        ]
    )
    print(f"arch: {args.arch} (width {cfg.width}, depth {cfg.depth}, heads {cfg.heads}, vocab {cfg.vocab_size})")
    print(table.to_string(index=False))
    return 0


# name -> (module with `add_arguments(parser)` and `run(args) -> int`, help line)
COMMANDS = {
    "data": ("cramming_simple.data.command", "prepare a budget's pretraining data ahead of time"),
    "pretrain": ("cramming_simple.train.command", "pretrain one block for a wall-clock budget"),
    "glue": ("cramming_simple.glue.command", "fine-tune a pretrained run on GLUE"),
    "report": ("cramming_simple.report.command", "tables and plots from run folders"),
    "bench": ("cramming_simple.bench", "time training steps of every block side by side"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s stage module is imported (the others' imports cost seconds of startup)."""
    from .model import PRESETS

    parser = argparse.ArgumentParser(prog="cramming-simple", description=__doc__, epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cramming-simple {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also CRAMMING_SIMPLE_DEBUG=1)")
    # --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value when it is not given there
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(name: str, help_line: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_line, parents=[common], epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add_parser("params", "parameter count of every block")
    p.add_argument("--arch", default="crammed-bert", choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help='print {"<block>": {"params": int, "non_embedding": int}}')
    p.set_defaults(func=cmd_params)

    for name, (module_name, help_line) in COMMANDS.items():
        p = add_parser(name, help_line)
        if name == command:
            module = importlib.import_module(module_name)
            p.description = module.__doc__
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
    # key=value overrides may come anywhere, also after options that follow a positional (`glue RUN --tasks
    # rte lr=1e-3`), which plain argparse would reject: collect the strays into args.overrides.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    bad = [o for o in getattr(args, "overrides", []) if "=" not in o]
    if bad:
        parser.error(f"overrides must be key=value, got {' '.join(bad)}")
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """The one path every user-facing error takes: one line on stderr and its exit code (traceback with --debug)."""
    debug = args.debug or debug_enabled()
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        return _report(args, err, err.exit_code, debug, quiet=getattr(err, "quiet", False))
    except KeyboardInterrupt as err:
        return _report(args, err, EXIT_INTERRUPTED, debug, message="interrupted")
    except Exception as err:
        if not is_disk_full(err):
            raise  # a bug: the traceback is what is needed
        return _report(args, err, EXIT_DISK_FULL, debug, message=f"disk full: {err}. Free space, then rerun (with --resume for pretraining)")


def _report(args: argparse.Namespace, err: BaseException, code: int, debug: bool, message: str | None = None, quiet: bool = False) -> int:
    if debug:
        traceback.print_exception(err)
    if not quiet:
        text = " ".join((message or str(err) or type(err).__name__).split())  # one line, whatever the message held
        print(f"cramming-simple {args.command}: error: {text}", file=sys.stderr, flush=True)
    return code
