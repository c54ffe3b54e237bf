"""`modeling_cramming_simple.py`: the self-contained modeling file a saved model folder carries, so that
`transformers` loads the folder with `trust_remote_code=True` on a machine without cramming-simple.

It is generated at save time from this package's own model sources (config, layers, blocks, bert and the
Hugging Face classes of model.hf), joined in dependency order with their relative imports dropped: there is
one implementation of the model, and the file in a folder is the code of the version that saved it. A user's
block joins it from the source the run was pretrained with, its `cramming_simple.model` imports resolved to
the names the file already defines; a block that needs anything else of cramming-simple cannot travel this way
(`RemoteCodeUnavailable`, one line).
"""

from __future__ import annotations

import ast
import inspect
import logging
from pathlib import Path

from ..config import ConfigError, require
from ..model.blocks import BlockSpec

MODELING_FILE = "modeling_cramming_simple.py"
MODEL_PACKAGE = Path(__file__).parent.parent / "model"  # the sources the file is made of live there
SOURCES = ("config.py", "layers.py", "blocks.py", "bert.py", "hf.py")  # model/, in dependency order
ARCHITECTURES = {
    "model": "CrammingSimpleModel",
    "mlm": "CrammingSimpleForMaskedLM",
    "classifier": "CrammingSimpleForSequenceClassification",
}
AUTO_MAP = {
    "AutoConfig": "CrammingSimpleConfig",
    "AutoModel": ARCHITECTURES["model"],
    "AutoModelForMaskedLM": ARCHITECTURES["mlm"],
    "AutoModelForSequenceClassification": ARCHITECTURES["classifier"],
}
# The interface between the model package and the file: what the sources import from outside themselves, and
# so what the file must define on its own (`_glue_code`). `outside_imports` reads it off the sources at save time:
# a new dependency of the model code fails there (and in the tests), never in a user's trust_remote_code load.
NEEDS = {
    "cramming_simple.config": {"ConfigError", "require"},
    "cramming_simple.model.registry": {"block_spec"},
}
# Modules of the package whose names the file defines: a user's block may import from these.
SHIPPED_MODULES = {"cramming_simple.model", *(f"cramming_simple.model.{s.removesuffix('.py')}" for s in SOURCES)}


log = logging.getLogger(__name__)


class RemoteCodeUnavailable(ConfigError):
    """A user's block that a self-contained modeling file cannot carry."""


def auto_map() -> dict[str, str]:
    stem = MODELING_FILE.removesuffix(".py")
    return {auto: f"{stem}.{cls}" for auto, cls in AUTO_MAP.items()}


# What the package's modules import from outside model/: in the file, defined here. `require` is the package's
# own function, copied by inspect; ConfigError is the package's error class in spirit (a ValueError).
def _glue_code() -> str:
    return "\n\n".join(
        [
            'class ConfigError(ValueError):\n    """An invalid config value (cramming_simple.errors.ConfigError)."""',
            inspect.getsource(require),
            "def block_spec(ref: str) -> BlockSpec:\n"
            '    """The built-in blocks, and the block this folder was pretrained with."""\n'
            "    require(ref in BLOCKS, f\"unknown block {ref!r}: this file knows {', '.join(BLOCKS)}\")\n"
            "    return BLOCKS[ref]",
        ]
    )


def _without_imports(source: str, where: str) -> tuple[str, list[ast.ImportFrom]]:
    """The source with its relative and __future__ imports removed (blank lines keep the line numbers), and the
    `from cramming_simple... import` statements it had (also removed)."""
    lines = source.splitlines()
    own: list[ast.ImportFrom] = []
    for node in ast.parse(source, where).body:
        if isinstance(node, ast.ImportFrom) and (
            node.level > 0 or node.module == "__future__" or (node.module or "").split(".")[0] == "cramming_simple"
        ):
            if node.level == 0 and node.module != "__future__":
                own.append(node)
            lines[node.lineno - 1 : node.end_lineno] = [""] * (node.end_lineno - node.lineno + 1)
    return "\n".join(lines) + "\n", own


def _defined(source: str, imports: bool = True) -> set[str]:
    """The top-level names a source defines (by def, class and assignment; and by import, with imports=True)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif imports and isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def outside_imports() -> dict[str, set[str]]:
    """{module: names} that the file's sources import from modules that are not among them."""
    inside = {f"cramming_simple.model.{name.removesuffix('.py')}" for name in SOURCES}
    found: dict[str, set[str]] = {}
    for name in SOURCES:
        module = f"cramming_simple.model.{name.removesuffix('.py')}"
        for node in ast.walk(ast.parse((MODEL_PACKAGE / name).read_text(), name)):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            base = module.split(".")[: -node.level] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            if target.startswith("cramming_simple") and target not in inside:
                found.setdefault(target, set()).update(alias.name for alias in node.names)
    return found


def _package_code() -> str:
    here = MODEL_PACKAGE
    parts = []
    for name in SOURCES:
        code, _ = _without_imports((here / name).read_text(), name)
        parts.append(f"# {'-' * 40} cramming_simple/model/{name}\n{code}")
    return "\n".join(parts)


def _user_block(spec: BlockSpec, package: str) -> str:
    """A user's block, as pretrained, made to run inside the file; refused in one line where it cannot."""
    where = spec.source.get("path") or spec.source.get("module") or spec.ref
    if spec.source_text is None:
        raise RemoteCodeUnavailable(f"the block {spec.ref} has no source text to put in {MODELING_FILE}")
    code, own = _without_imports(spec.source_text, where)
    defined = _defined(package)

    def refuse(why: str) -> RemoteCodeUnavailable:
        return RemoteCodeUnavailable(
            f"{where}: {why}, which a self-contained {MODELING_FILE} cannot carry; the folder loads where "
            "cramming-simple is installed (no remote code needed there), not with trust_remote_code elsewhere"
        )

    tree = ast.parse(spec.source_text, where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cramming_simple" for a in node.names):
            raise refuse(f"line {node.lineno} imports cramming_simple as a module")
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise refuse(f"line {node.lineno} has a relative import")
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cramming_simple":
            if node.lineno not in {n.lineno for n in own}:
                raise refuse(f"line {node.lineno} imports cramming_simple inside a function or class")
            if node.module not in SHIPPED_MODULES:
                raise refuse(f"line {node.lineno} imports {node.module}")
    aliases = []
    for node in own:
        for alias in node.names:
            if alias.name not in defined:
                raise refuse(f"line {node.lineno} imports {alias.name} from {node.module}")
            if alias.asname and alias.asname != alias.name:
                aliases.append(f"{alias.asname} = {alias.name}")
    clash = sorted(_defined(code) & _defined(package, imports=False))
    if clash:
        raise refuse(f"it defines {', '.join(clash)}, names the harness's model code uses for its own")
    cls = spec.source["class"]
    return (
        f"# {'-' * 40} the folder's block: {spec.ref}\n"
        + code
        + "\n".join(aliases)
        + f"\n\nBLOCKS[{spec.ref!r}] = BlockSpec({cls}, {spec.title!r}, ref={spec.ref!r}, name={spec.name!r})\n"
    )


def modeling_source(spec: BlockSpec, version: str) -> str:
    """The text of `modeling_cramming_simple.py` for a model of this block."""
    package = _package_code() + "\n\n" + _glue_code() + "\n"
    defined = _defined(package)
    header = (
        f'"""cramming-simple {version}: the {spec.title} encoder as Hugging Face classes, generated from the\n'
        "harness's model package when this folder was saved. Needs torch and transformers, not cramming-simple.\n\n"
        "    AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)\n"
        '"""\n\nfrom __future__ import annotations\n\n'
    )
    text = header + package
    if not spec.builtin:
        text += "\n\n" + _user_block(spec, package)
    unmet = {m: names - NEEDS.get(m, set()) for m, names in outside_imports().items() if names - NEEDS.get(m, set())}
    require(not unmet, f"the model sources import {unmet}, which {MODELING_FILE} does not define (remote.NEEDS)")
    compile(text, MODELING_FILE, "exec")  # a generator bug fails here, at save time, not at a user's load
    require("CrammingSimpleForMaskedLM" in defined, "model.hf lost its classes")
    return text


def write_modeling_file(spec: BlockSpec, folder: str | Path, shown_as: str | Path | None = None) -> bool:
    """Write the folder's modeling file; False (with a warning naming `shown_as`, the folder's final name) when
    the block cannot travel as remote code: the folder is then saved without it, never lost."""
    from .. import __version__

    try:
        text = modeling_source(spec, __version__)
    except RemoteCodeUnavailable as err:
        log.warning(f"{err}; {shown_as or folder} is saved without {MODELING_FILE}")
        return False
    (Path(folder) / MODELING_FILE).write_text(text)
    return True
