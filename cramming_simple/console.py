"""What the command line prints besides its results: the library's log records (no torch import: it is loaded
before any command)."""

from __future__ import annotations

import logging
import os
import sys
import warnings

LOG = logging.getLogger("cramming_simple")  # the library's logger: every module logs under it


class ConsoleHandler(logging.Handler):
    """What the command line shows: info and debug on stdout, warnings and errors on stderr (with "warning: " in
    front). The streams are looked up for every record, so redirected ones (tests, notebooks) are honoured."""

    info_to_stderr = False  # set by `stdout_for_results`: stdout carries a machine-readable result

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                prefix = "warning: " if record.levelno == logging.WARNING else "error: "
                sys.stderr.write(prefix + text + "\n")
                sys.stderr.flush()
            else:
                stream = sys.stderr if self.info_to_stderr else sys.stdout
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging's own rule: a failing handler never raises
            self.handleError(record)


def setup_logging(verbosity: int = 0) -> None:
    """The command line's logging: -q (verbosity < 0) warnings only, no progress; default info; -v debug too."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    LOG.handlers = [h for h in LOG.handlers if not isinstance(h, ConsoleHandler)] + [ConsoleHandler()]
    LOG.setLevel(level)
    LOG.propagate = False
    if verbosity < 0 or not sys.stderr.isatty():
        quiet_library_progress()


def stdout_for_results() -> None:
    """A command whose stdout is a result (`--json`): its info lines go to stderr, so that `> file.json` holds JSON."""
    for handler in LOG.handlers:
        if isinstance(handler, ConsoleHandler):
            handler.info_to_stderr = True


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (the compile fallback's, torch's, transformers') as one `warning:` line on stderr, through
    the same handler as the library's own warnings: the command line's one output path."""
    LOG.getChild("warnings").warning(f"{message} ({category.__name__}, {os.path.basename(filename)}:{lineno})")


def route_warnings() -> None:
    """The command line's Python warnings take `show_warning` (a library user keeps Python's own display)."""
    warnings.showwarning = show_warning


def quiet_library_progress() -> None:
    """No progress bars from `datasets` and `huggingface_hub` (data loading, downloads): with -q, and whenever
    stderr is not a terminal, where their carriage-return redraws would fill a log file with partial lines."""
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module, call in (("datasets", "disable_progress_bars"), ("huggingface_hub.utils", "disable_progress_bars")):
        if module in sys.modules:  # imported before the variables were set: they read them at import only
            getattr(sys.modules[module], call, lambda: None)()
