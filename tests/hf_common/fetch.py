"""Fetch transformers' own common model tests for the installed transformers version (`make test-hf`).

Downloads that version's source distribution from the package registry with pip (once; cached under
~/.cache/cramming-simple/transformers-tests/<version>, or $XDG_CACHE_HOME), takes its top-level `tests/*.py`
into a package `transformers_tests`, and prints the folder to put on sys.path. Nothing of it is copied into
this repository.

The source distribution leaves out two modules that `test_modeling_common.py` imports for mixins these models
do not use (`tests/exporters/test_export.py`: torch.export tests, `tests/generation/test_utils.py`: generate
tests; an encoder cannot generate). Where they are missing, they are written as empty mixins, and
docs/huggingface.md says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

STUBS = {
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
}


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cramming-simple" / "transformers-tests" / transformers.__version__


def fetch(root: Path) -> Path:
    package = root / "transformers_tests"
    if (package / "test_modeling_common.py").exists():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        spec = f"transformers=={transformers.__version__}"
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, spec]
        subprocess.run([*pip, "--no-build-isolation"], check=True, stdout=sys.stderr)
        (sdist,) = Path(tmp).glob("transformers-*.tar.gz")
        staging = Path(tmp) / "transformers_tests"
        staging.mkdir()
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts  # transformers-<version>/tests/<name>.py: the top level only
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (staging / parts[2]).write_bytes(tar.extractfile(member).read())
        (staging / "__init__.py").touch()
        for name, text in STUBS.items():
            path = staging / name
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                (path.parent / "__init__.py").touch()
                path.write_text(
                    f"# not in transformers' source distribution: an empty mixin (tests/hf_common/fetch.py)\n{text}"
                )
        root.mkdir(parents=True, exist_ok=True)
        shutil.move(staging, package)  # across filesystems too
    return root


if __name__ == "__main__":
    print(fetch(cache_dir()))
