"""Which block a name means: the seven built-ins, a user's block, or one an installed package registers.

A block reference (`--block`, `block:` in a config) is one of
  preln, sas, ...                  a built-in block (model.blocks.BLOCKS);
  path/to/my_blocks.py:MyBlock     a class in a Python file (recorded as its absolute path);
  my_package.module:MyBlock        a class in an importable module;
  myblock                          a name an installed package registers under the entry-point group
                                   `cramming_simple.blocks` (`myblock = "my_package.module:MyBlock"`).

A user's block follows the built-ins' protocol (docs/your-block.md):
  MyBlock(cfg: ArchConfig, layer: int) -> nn.Module, `layer` its index in the stack (0 .. depth-1);
  forward(x, mask) -> x: x is the residual stream (B, T, d) with d = cfg.width, mask a model.layers.KeyMask
  (or None: no padding), and the output is (B, T, d) again.
Optional class attributes: `title` (its name in tables and figures; default: the class name), `lr` and
`weight_decay` (its recipe's peak learning rate and weight decay; default: Pre-LN's).

Every user block is recorded with a SHA-256 of its source file: a run, its saved model and everything loaded from
them refuse to go on when that file has changed since pretraining (`recorded_block`).

What has been loaded lives in a `BlockRegistry`, an object: the blocks it imported (one module per source hash,
so that a class stays the same object for pickling and torch.compile) and the protocol checks passed. The
process's registry (`process_registry()`) is the one the model classes use, also under transformers' Auto
classes, which have no way to hand one down; a test or a tool may make its own. A user's file is imported from
the text that was hashed, on its own: its folder is never put on `sys.path`, so the file cannot import its
neighbours (the hash covers one file: keep a block's code in it, or in an installed package).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import re
import sys
import types
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ConfigError
from .blocks import BLOCKS, BlockSpec
from .config import ArchConfig
from .layers import KeyMask

ENTRY_POINT_GROUP = "cramming_simple.blocks"
EMBEDDED_SOURCE = "block.py"  # a saved model's copy of its user block's source


class BlockSourceChanged(ConfigError):
    """A user's block no longer has the source a run was pretrained with."""


def entry_point_blocks() -> dict[str, importlib.metadata.EntryPoint]:
    """Blocks that installed packages register: {name: entry point}."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_file_ref(target: str) -> bool:
    return target.endswith(".py") or "/" in target


def _block_class(module: types.ModuleType, cls: str, where: str) -> type[nn.Module]:
    """The class `cls` of `module`, checked to be an nn.Module built as Class(cfg, layer) with forward(x, mask)."""
    obj = getattr(module, cls, None)
    if obj is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__
        )
        raise ConfigError(f"no class '{cls}' in {where} (nn.Module classes there: {', '.join(found) or 'none'})")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"{where}:{cls} is not an nn.Module class")
    for what, fn, args, form in (
        ("built", obj, (None, 0), f"{cls}(cfg: ArchConfig, layer: int)"),
        ("called", obj.forward, (None, None, None), "forward(self, x, mask)"),
    ):
        try:
            inspect.signature(fn).bind(*args)
        except TypeError:
            raise ConfigError(
                f"{where}:{cls} must be {what} as {form}; its signature is {inspect.signature(fn)}"
            ) from None
        except ValueError:  # no signature to read (a C extension): the trial forward decides
            pass
    return obj


def _spec(cls: type[nn.Module], ref: str, record: dict, text: str | None) -> BlockSpec:
    where = f"{record.get('path') or record.get('module')}:{record['class']}"
    title = getattr(cls, "title", cls.__name__)
    lr, weight_decay = getattr(cls, "lr", None), getattr(cls, "weight_decay", None)
    if not isinstance(title, str) or not title.strip():
        raise ConfigError(f"{where}: the class attribute 'title' must be a non-empty string, got {title!r}")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"{where}: the class attribute 'lr' must be a positive number, got {lr!r}")
    if weight_decay is not None and not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ConfigError(f"{where}: the class attribute 'weight_decay' must be 0 or more, got {weight_decay!r}")
    short = ref if record["kind"] == "entry_point" else re.sub(r"[^a-z0-9]+", "-", record["class"].lower()).strip("-")
    return BlockSpec(
        cls,
        title,
        ref=ref,
        name=short or "block",
        lr=None if lr is None else float(lr),
        weight_decay=None if weight_decay is None else float(weight_decay),
        source={**record, "title": title},
        source_text=text,
    )


class BlockRegistry:
    """The blocks one process (or one test) has loaded: user blocks by reference, and the protocol checks passed."""

    def __init__(self) -> None:
        self.loaded: dict[str, BlockSpec] = {}  # ref -> the user block last loaded under it
        self.checked: set[tuple] = set()  # (ref, sha256, arch) that passed check_protocol

    def spec(self, ref: str) -> BlockSpec:
        """The registry entry of a block reference; a user's block is imported (a file: read again, reloaded if it
        changed). Unknown names, missing files or classes and classes that cannot be blocks fail with one line."""
        if ref in BLOCKS:
            return BLOCKS[ref]
        if ":" in ref:
            target, _, cls = ref.rpartition(":")
            if is_file_ref(target):
                return self._file_block(Path(target), cls)
            return self._module_block(target, cls, ref, "module")
        plugins = entry_point_blocks()
        if ref in plugins:
            module, _, cls = plugins[ref].value.partition(":")
            return self._module_block(module.strip(), cls.strip(), ref, "entry_point")
        raise ConfigError(
            f"unknown block '{ref}'. Valid blocks: {', '.join([*BLOCKS, *plugins])}, or your own as "
            "path/to/file.py:Class or package.module:Class"
        )

    def load(self, ref: str, cfg: ArchConfig) -> BlockSpec:
        """`spec`, plus a trial build and forward at `cfg` (`check_protocol`): fails in seconds, before any data."""
        spec = self.spec(ref)
        self.check_protocol(spec, cfg)
        return spec

    def recorded(self, ref: str, record: dict | None, embedded: Path | None = None) -> BlockSpec:
        """The block a run or a saved model was made with, loaded again; refuses (one line) when its source changed.

        record: the provenance a config, summary or model folder holds (None or kind 'builtin': a built-in block).
        embedded: a saved model's copy of the source, used when the recorded file no longer exists (the model was
        copied to another machine): it holds exactly the recorded source, which its hash proves.
        """
        if not record or record.get("kind", "builtin") == "builtin":
            return self.spec(ref)
        sha = record.get("sha256")
        where = record.get("path") or record.get("module") or ref
        if (
            record["kind"] == "file"
            and not Path(record["path"]).is_file()
            and embedded is not None
            and embedded.is_file()
        ):
            text = embedded.read_text()
            if sha256_text(text) == sha:
                return self._register(ref, Path(record["path"]), record["class"], text, sha, origin=embedded)
        try:
            spec = self.spec(ref)
        except ConfigError as err:
            raise ConfigError(f"{err}; it was pretrained with block {ref} (source sha256 {str(sha)[:12]})") from None
        now = spec.source.get("sha256")
        if sha and now != sha:
            copy = (
                f" (the pretrained source is kept in {embedded})" if embedded is not None and embedded.is_file() else ""
            )
            raise BlockSourceChanged(
                f"block source {where} changed since pretraining (sha256 {sha[:12]} then, {str(now)[:12]} now): a "
                f"different block would give a wrong table. Restore the file{copy}, or pretrain a new run"
            )
        return spec

    def check_protocol(self, spec: BlockSpec, cfg: ArchConfig) -> None:
        """Build layers 0 and 1 of a user's block at `cfg` and run a small forward with and without padding: a wrong
        signature, a crash or a wrong output shape fails in one line before anything else starts."""
        if spec.builtin:
            return
        key = (spec.ref, spec.source.get("sha256"), tuple(sorted(asdict(cfg).items())))
        if key in self.checked:
            return
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, cfg.width, generator=generator)  # (B, T, d)
        attention_mask = torch.ones(2, 8, dtype=torch.long)
        attention_mask[1, 5:] = 0  # the second sequence ends in 3 padded positions
        with torch.random.fork_rng():
            for layer in range(min(2, cfg.depth)):
                try:
                    block = spec.build(cfg, layer)
                except Exception as err:  # noqa: BLE001
                    raise ConfigError(
                        f"block {spec.ref}: building layer {layer} failed: {type(err).__name__}: {err}"
                    ) from None
                if not isinstance(block, nn.Module):
                    raise ConfigError(
                        f"block {spec.ref}: {spec.title} built a {type(block).__name__}, not an nn.Module"
                    )
                for mask in (KeyMask.from_attention_mask(attention_mask, x.dtype), None):
                    try:
                        with torch.no_grad():
                            out = block(x, mask)
                    except Exception as err:  # noqa: BLE001
                        raise ConfigError(
                            f"block {spec.ref}: forward(x, mask) failed on x of shape {tuple(x.shape)} (B, T, d) with "
                            f"mask {'a KeyMask' if mask is not None else 'None'}: {type(err).__name__}: {err}"
                        ) from None
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    if got != tuple(x.shape):
                        raise ConfigError(
                            f"block {spec.ref}: forward(x, mask) must return the residual stream shaped like x, "
                            f"(B, T, d) = {tuple(x.shape)}; it returned {got}"
                        )
        self.checked.add(key)

    def _file_block(self, path: Path, cls: str) -> BlockSpec:
        path = path.expanduser().absolute()
        ref = f"{path}:{cls}"
        if not path.is_file():
            if ref in self.loaded:  # loaded from a saved model's embedded copy (recorded_block)
                return self.loaded[ref]
            raise ConfigError(f"block file not found: {path}")
        text = path.read_text()
        sha = sha256_text(text)
        cached = self.loaded.get(ref)
        if cached is not None and cached.source["sha256"] == sha:
            return cached
        return self._register(ref, path, cls, text, sha)

    def _register(self, ref: str, path: Path, cls: str, text: str, sha: str, origin: Path | None = None) -> BlockSpec:
        """Import `text` (the source of `path`) as a module of its own and register its class `cls` under `ref`.

        The module runs from the text that was hashed, so the class is exactly the recorded source. `origin`: the
        file the text was read from when that is not `path` (a saved model's embedded copy)."""
        stem = re.sub(r"\W", "_", path.stem)
        name = f"_cramming_simple_block_{stem}_{sha[:12]}"
        module = sys.modules.get(name)
        if module is None:
            module = types.ModuleType(name)
            module.__file__ = str(origin or path)
            sys.modules[name] = module  # dataclasses, pickling and torch.compile look classes up by module
            try:  # on its own: the file's folder is not put on sys.path (the hash covers this one file)
                exec(compile(text, str(origin or path), "exec"), module.__dict__)
            except Exception as err:  # noqa: BLE001 - whatever the user's file raises, it is reported in one line
                del sys.modules[name]
                raise ConfigError(f"cannot import block file {path}: {type(err).__name__}: {err}") from None
        record = {"kind": "file", "path": str(path), "class": cls, "sha256": sha}
        spec = _spec(_block_class(module, cls, str(path)), ref, record, text)
        self.loaded[ref] = spec
        return spec

    def _module_block(self, module_name: str, cls: str, ref: str, kind: str) -> BlockSpec:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"cannot import block module '{module_name}': {type(err).__name__}: {err}") from None
        file = getattr(module, "__file__", None)
        text = Path(file).read_text() if file and file.endswith(".py") and Path(file).is_file() else None
        record = {"kind": kind, "module": module_name, "class": cls, "path": file, "sha256": text and sha256_text(text)}
        if kind == "entry_point":
            record["entry_point"] = ref
        cached = self.loaded.get(ref)
        if cached is not None and cached.source == record:
            return cached
        spec = _spec(_block_class(module, cls, module_name), ref, record, text)
        self.loaded[ref] = spec
        return spec


@functools.cache
def process_registry() -> BlockRegistry:
    """The registry the model classes use in this process, made on first use (transformers' Auto classes build
    models from a config alone and cannot hand one down)."""
    return BlockRegistry()


def block_spec(ref: str) -> BlockSpec:
    """`BlockRegistry.spec` of the process's registry."""
    return process_registry().spec(ref)


def load_block(ref: str, cfg: ArchConfig) -> BlockSpec:
    """`BlockRegistry.load` of the process's registry."""
    return process_registry().load(ref, cfg)


def recorded_block(ref: str, record: dict | None, embedded: Path | None = None) -> BlockSpec:
    """`BlockRegistry.recorded` of the process's registry."""
    return process_registry().recorded(ref, record, embedded)


def check_protocol(spec: BlockSpec, cfg: ArchConfig) -> None:
    """`BlockRegistry.check_protocol` of the process's registry."""
    process_registry().check_protocol(spec, cfg)


def parse_blocks(text: str) -> list[str]:
    """'all' or a comma list of block references ('all' inside the list: the seven built-ins) -> references."""
    refs: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if item == "all":
            refs += list(BLOCKS)
        elif item:
            refs.append(block_spec(item).ref)
    return list(dict.fromkeys(refs))
