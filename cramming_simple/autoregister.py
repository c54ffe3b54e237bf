"""Where cramming-simple is installed, `transformers` knows its model type without remote code:
`AutoConfig`, `AutoModel`, `AutoModelForMaskedLM`, `AutoModelForSequenceClassification` and the pipelines load a
saved folder with the package's own classes (model.hf), `trust_remote_code` or not.

Registering needs transformers' model classes, which take seconds to import, and most commands never need
them: importing cramming_simple registers at once only when transformers is already imported, and otherwise
the moment something imports it (an import hook that runs once).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

TARGET = "transformers"
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
    if TARGET in sys.modules:
        register()
    elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
