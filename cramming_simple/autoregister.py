"""Where cramming-simple is installed, `transformers` knows its model type without remote code:
`AutoConfig`, `AutoModel`, `AutoModelForMaskedLM`, `AutoModelForSequenceClassification` and the pipelines load a
saved folder with the package's own classes (model.hf), `trust_remote_code` or not.

Registering needs transformers' model classes, which take seconds to import, and most code never needs
them: importing cramming_simple registers at once only when transformers is already imported, and otherwise
the moment something imports it (an import hook that runs once). The command line opts out (`opt_out`, which
its spawned workers inherit through CRAMMING_SIMPLE_AUTOREGISTER=0): it loads folders with its own `load_model`,
never through the Auto classes, and the registration would add 1.2 s of imports to every command that reads a
tokenizer. A library user may opt out the same way.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys

TARGET = "transformers"
ENV = "CRAMMING_SIMPLE_AUTOREGISTER"  # "0": no registration in this process and its children
log = logging.getLogger(__name__)


def register() -> None:
    try:
        from .model import hf

        hf.register()
    except Exception as err:  # noqa: BLE001 - a transformers these classes do not fit must not break its import
        log.debug(f"cramming-simple's model classes are not registered with transformers: {err}")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `transformers` is about to be imported, it wraps that module's loader so that
    the registration runs right after the module has executed, then steps out of the import system."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            execute = spec.loader.exec_module

            def execute_then_register(module):
                execute(module)
                register()

            spec.loader.exec_module = execute_then_register
        return spec


def install() -> None:
    if os.environ.get(ENV) == "0":
        return
    if TARGET in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def opt_out() -> None:
    """No registration in this process (unless it has already happened) nor in the processes it starts."""
    os.environ[ENV] = "0"
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _RegisterAfterImport)]
