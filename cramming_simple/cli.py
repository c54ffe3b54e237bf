"""`cramming-simple` (also `python -m cramming_simple`): one subcommand per stage.

Run commands take OmegaConf `key=value` overrides after their options, e.g.
`cramming-simple pretrain --block sas --budget 1h train.lr=2e-3 hours=0.5`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from . import __version__, autoregister
from .commands import COMMANDS
from .console import route_warnings, setup_logging
from .errors import (
    EXIT_CODES_HELP,
    EXIT_DISK_FULL,
    EXIT_INTERRUPTED,
    ConfigError,
    UserError,
    debug_enabled,
    is_disk_full,
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others' imports cost seconds of startup)."""
    parser = argparse.ArgumentParser(
        prog="cramming-simple",
        description=__doc__,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cramming-simple {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (also CRAMMING_SIMPLE_DEBUG=1)"
    )
    # --debug is accepted after the subcommand too; SUPPRESS keeps the top-level value when it is not given there
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    for p in (parser, common):  # -v / -q before or after the subcommand
        default = 0 if p is parser else argparse.SUPPRESS
        p.add_argument("-v", "--verbose", action="count", default=default, help="more output (debug messages)")
        p.add_argument("-q", "--quiet", action="count", default=default, help="less output: warnings only, no progress")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(name: str, help_line: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_line,
            parents=[common],
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    for name, help_line in COMMANDS.items():
        p = add_parser(name, help_line)
        if name == command:
            module = importlib.import_module(f"cramming_simple.commands.{name.replace('-', '_')}")
            p.description = module.__doc__
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # The command's own process (and its GLUE workers): folders load with load_model, not the Auto classes,
        # so no registration (autoregister.py). A call from Python (argv given) leaves its caller's process alone.
        autoregister.opt_out()
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


def check_overrides(overrides: list[str]) -> None:
    """`train.lr=` (nothing after the =) would silently mean null, i.e. the default: refused, as a typo."""
    empty = [o for o in overrides if o.split("=", 1)[1].strip() == ""]
    if empty:
        key = empty[0].split("=", 1)[0]
        raise ConfigError(
            f"override {empty[0]!r} has no value: give one ({key}=...), or {key}=null to ask for the default"
        )


def run_command(args: argparse.Namespace) -> int:
    """The one path every user-facing error takes: one line on stderr and its exit code (traceback with --debug)."""
    setup_logging(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))
    route_warnings()  # Python warnings print as the library's own: one `warning:` line on stderr
    debug = args.debug or debug_enabled()
    try:
        check_overrides(getattr(args, "overrides", []))
        return int(args.func(args) or 0)
    except UserError as err:
        return _report(args, err, err.exit_code, debug, quiet=getattr(err, "quiet", False))
    except KeyboardInterrupt as err:
        return _report(args, err, EXIT_INTERRUPTED, debug, message="interrupted")
    except Exception as err:
        if not is_disk_full(err):
            raise  # a bug: the traceback is what is needed
        return _report(
            args,
            err,
            EXIT_DISK_FULL,
            debug,
            message=f"disk full: {err}. Free space, then rerun (with --resume for pretraining)",
        )


def _report(
    args: argparse.Namespace,
    err: BaseException,
    code: int,
    debug: bool,
    message: str | None = None,
    quiet: bool = False,
) -> int:
    if debug:
        traceback.print_exception(err)
    if not quiet:
        text = " ".join((message or str(err) or type(err).__name__).split())  # one line, whatever the message held
        print(f"cramming-simple {args.command}: error: {text}", file=sys.stderr, flush=True)
    return code
