"""The presets that are part of the program: budgets, GLUE protocols and task table, published numbers.

They live where users read and edit them, the top-level `budgets/`, `glue/` and `reports/reference/` of the
checkout; the wheel carries the same folders inside the package (`cramming_simple/_presets/...`, see
pyproject.toml), read through `importlib.resources` when the tool is installed. A user's own file of the
same name in `./budgets/` or `./glue/` of the current directory takes precedence (with a line on stderr
saying which file was used), and any preset may also be given as a path to a YAML file.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_ROOT.parent  # the repository, when running from a source checkout (editable installs too)
# kind -> the folder in the checkout; inside the wheel each is cramming_simple/_presets/<kind>
FOLDERS = {"budgets": "budgets", "glue": "glue", "reference": "reports/reference"}


def shipped(kind: str) -> Path:
    """The folder of shipped presets of `kind`: the checkout's, else the copy inside the installed package."""
    checkout = CHECKOUT / FOLDERS[kind]
    if (CHECKOUT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return Path(str(resources.files("cramming_simple") / "_presets" / kind))


def find_preset(kind: str, name: str) -> Path:
    """A preset by name (`24h` -> budgets/24h.yaml) or an explicit path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    ours = shipped(kind) / f"{name}.yaml"
    local = Path.cwd() / kind / f"{name}.yaml"
    if local.is_file() and (not ours.is_file() or local.resolve() != ours.resolve()):
        log.warning(f"using {local} (a {kind}/ file in the current directory takes precedence over the shipped preset)")
        return local
    if ours.is_file():
        return ours
    raise ConfigError(
        f"unknown {kind} preset '{name}'. Available: {', '.join(list_presets(kind))} (or a path to a .yaml file)"
    )


def list_presets(kind: str) -> list[str]:
    """Preset names of `kind`: the shipped ones and the current directory's own."""
    return sorted({p.stem for folder in (shipped(kind), Path.cwd() / kind) for p in folder.glob("*.yaml")})
