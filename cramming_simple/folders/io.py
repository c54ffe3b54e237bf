"""A model folder (a run's `model/`): `model.safetensors` (weights: `encoder.*`, and a fine-tuned classifier's
head), `config.json` (arch + block, where a user's block came from, and the keys Hugging Face reads),
`modeling_cramming_simple.py` (folders.remote), `block.py` (a user's block: its source as pretrained), tokenizer
files.

The folder is published whole: written beside its final name and renamed into place, so a reader never sees
half a model. `check_model` finds a damaged one before any fine-tuning starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ConfigError
from ..errors import CorruptFileError, DiskFullError, is_disk_full
from ..model.bert import MaskedLM, SequenceClassifier, clean_state_dict, current_key, unwrap, unwrapped_key
from ..model.config import MODEL_TYPE, ArchConfig, special_ids
from ..model.registry import EMBEDDED_SOURCE, block_spec, check_protocol, recorded_block
from ..runtime import FILE_MODE, fsync_folder, read_json, writer_tag
from .remote import ARCHITECTURES, auto_map, write_modeling_file

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, TOKENIZER_CONFIG = "model.safetensors", "config.json", "tokenizer_config.json"

FORMAT = 1


def _encoder_key(key: str) -> str:
    """A weight name as the encoder's own state dict has it: no wrapper prefixes, no 'encoder.' prefix."""
    return unwrapped_key(key).removeprefix("encoder.")


def save_model(model: nn.Module, path: str | Path, tokenizer: Any = None, extra: dict | None = None) -> Path:
    """Write `path/model.safetensors` + `path/config.json` (+ the tokenizer when given), all or nothing.

    The folder is also a Hugging Face model folder: config.json has a `model_type`, `architectures` and an
    `auto_map` to the `modeling_cramming_simple.py` written beside it (folders.remote). A MaskedLM saves its encoder
    (weights `encoder.*`), a SequenceClassifier its head as well (`classifier.*`) with `num_labels` and
    `head_width`; `extra` adds config keys (a GLUE task's `id2label`, ...). A user's block that cannot travel as
    remote code is saved all the same, without `auto_map`, with a warning.

    The tokenizer is saved with `model_max_length` = the model's `seq_len`, so `tokenizer(text, truncation=True)`
    outside the harness cuts where the model's positions end.
    """
    path = Path(path)
    plain = unwrap(model)
    encoder = plain.encoder
    tmp = path.with_name(f".{path.name}.{writer_tag()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state = {k: v.detach().contiguous().cpu() for k, v in clean_state_dict(plain.state_dict()).items()}
    spec = encoder.spec
    config = model_config(plain, tokenizer, extra)
    try:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if write_modeling_file(spec, tmp, shown_as=path):
            config["auto_map"] = auto_map()
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if spec.source_text is not None:  # the source as imported at the start, whatever the file holds now
            (tmp / EMBEDDED_SOURCE).write_text(spec.source_text)
        if tokenizer is not None:
            tokenizer.model_max_length = encoder.cfg.seq_len
            tokenizer.save_pretrained(str(tmp))
            portable_tokenizer_config(tmp / TOKENIZER_CONFIG)
        for f in tmp.iterdir():
            os.chmod(f, FILE_MODE)  # safetensors writes 0600: a model folder is for others to read too
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise DiskFullError(path / WEIGHTS, sum(v.numel() * v.element_size() for v in state.values())) from None
        raise
    old = path.with_name(f".{path.name}.{writer_tag()}.old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    fsync_folder(path.parent)
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
    return path


def model_config(plain: nn.Module, tokenizer: Any, extra: dict | None) -> dict:
    """config.json of a saved model: format, block and its source, arch, the Hugging Face keys, special ids."""
    encoder = plain.encoder
    config = {
        "format": FORMAT,
        "block": encoder.block,
        "block_title": encoder.spec.title,
        "block_source": encoder.spec.source,
        "arch": asdict(encoder.cfg),
        "model_type": MODEL_TYPE,
        "architectures": [ARCHITECTURES["classifier" if isinstance(plain, SequenceClassifier) else "mlm"]],
    }
    if isinstance(plain, SequenceClassifier):
        config |= {"num_labels": plain.num_labels, "head_width": plain.classifier.dense.out_features}
        config |= {"problem_type": "regression"} if plain.num_labels == 1 else {}
    # the special tokens' ids (transformers reads pad_token_id); without a tokenizer, the padding index alone
    config |= special_ids(tokenizer) if tokenizer is not None else {"pad_token_id": encoder.cfg.pad_token_id}
    return config | (extra or {})


def portable_tokenizer_config(path: Path) -> None:
    """transformers 5 names a fast tokenizer's class `TokenizersBackend`, which transformers 4 does not know; both
    load `PreTrainedTokenizerFast` (the same class in 5), so a folder saved here loads under either. And its
    inputs are the model's: no token_type_ids (transformers 4's default for the class returns them, with ones on
    a pair's second segment, which the model refuses: it has no segment embeddings)."""
    config = read_json(path)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = ["input_ids", "attention_mask"]
    path.write_text(json.dumps(config, indent=2) + "\n")


def model_head(path: str | Path) -> tuple[int, int] | None:
    """(num_labels, head_width) of a saved fine-tuned classifier; None for a pretrained (MLM) folder."""
    config = read_json(Path(path) / CONFIG)
    if ARCHITECTURES["classifier"] not in (config.get("architectures") or []):
        return None
    # transformers' save_pretrained keeps id2label, not num_labels, and head_width None for the encoder's width
    num_labels = config.get("num_labels") or len(config.get("id2label") or {}) or 2
    return int(num_labels), int(config.get("head_width") or config["arch"]["width"])


def read_model_config(path: str | Path) -> tuple[ArchConfig, str]:
    """(arch, block reference) of a saved model. A user's block is loaded again and must have the source it was
    pretrained with (else one line: `model.registry.recorded_block`); from the folder's copy if the file is gone."""
    path = Path(path)
    if not (path / CONFIG).exists():
        raise ConfigError(f"no model at {path}: expected {path / CONFIG} and {path / WEIGHTS}")
    config = read_json(path / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict) or "block" not in config:
        raise CorruptFileError(path / CONFIG, "not a model config (expected the keys 'block' and 'arch')")
    try:
        arch = ArchConfig.from_dict(config["arch"])
    except (TypeError, ConfigError) as err:
        raise CorruptFileError(path / CONFIG, f"invalid arch ({err})") from None
    spec = recorded_block(config["block"], config.get("block_source"), path / EMBEDDED_SOURCE)
    return arch, spec.ref


def check_model(path: str | Path) -> tuple[ArchConfig, str]:
    """Check a saved model without loading its weights: config.json parses, model.safetensors has an intact
    header that covers the whole file, and its tensors are exactly the names and shapes of the model it
    describes (the encoder; and a fine-tuned folder's head).

    Raises `CorruptFileError` (or `ConfigError` for an unknown block) naming the file.
    """
    path = Path(path)
    arch, block = read_model_config(path)
    check_protocol(block_spec(block), arch)
    pad = read_json(path / CONFIG).get("pad_token_id", arch.pad_token_id)  # what transformers would pad with
    if pad != arch.pad_token_id:
        why = f"pad_token_id {pad} is not the embedding's padding index (arch.pad_token_id {arch.pad_token_id})"
        raise CorruptFileError(path / CONFIG, why)
    weights = path / WEIGHTS
    if not weights.exists():
        raise ConfigError(f"no model weights at {weights}")
    try:
        with safe_open(str(weights), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - SafetensorError and OS errors: the file cannot be used either way
        raise CorruptFileError(weights, f"damaged safetensors file ({str(err).splitlines()[0]})") from None
    head = model_head(path)
    with torch.device("meta"):
        described = MaskedLM(arch, block) if head is None else SequenceClassifier(arch, block, *head)
        expected = {_encoder_key(k): tuple(v.shape) for k, v in described.state_dict().items()}
    shapes = {current_key(_encoder_key(k)): v for k, v in shapes.items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if expected[k] != shapes[k])
    if missing or unexpected or wrong:
        detail = ", ".join(
            f"{what} {keys[:3]}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CorruptFileError(weights, f"does not fit the {block} encoder its {CONFIG} describes ({detail})")
    return arch, block


def load_model(
    path: str | Path, num_labels: int | None = None, head_width: int | None = None, **arch_overrides: Any
) -> nn.Module:
    """Load a saved model: the MLM model, or (num_labels given) a SequenceClassifier with a fresh head of
    `head_width` (None: the encoder's width). A fine-tuned folder (save_model of a SequenceClassifier) loads
    as its classifier, head included, when num_labels is not given.

    arch_overrides change execution-time values such as dropout; shapes come from the saved config.
    """
    path = Path(path)
    arch, block = read_model_config(path)
    for key, value in arch_overrides.items():
        setattr(arch, key, value)
    arch.validate()
    head = model_head(path) if num_labels is None else None
    if head is not None:
        model = SequenceClassifier(arch, block, *head)
    elif num_labels is None:
        model = MaskedLM(arch, block)
    else:
        model = SequenceClassifier(arch, block, num_labels, head_width)
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # noqa: BLE001 - SafetensorError and OS errors: the file cannot be used either way
        raise CorruptFileError(path / WEIGHTS, f"damaged safetensors file ({str(err).splitlines()[0]})") from None
    load_encoder_state(model, weights, with_head=head is not None)
    return model


HEAD_MODULES = ("classifier",)  # SequenceClassifier's modules beside its encoder


def load_encoder_state(model: nn.Module, state: dict[str, torch.Tensor], with_head: bool = False) -> None:
    """Load encoder weights (any wrapper prefixes, with or without an 'encoder.' prefix), and with_head a
    classifier's head too (else a saved head is left out: a fresh one stays), under its old names as well
    (`dense.*`, `out.*`: model.bert.LEGACY_HEAD); strict on keys."""
    state = {current_key(_encoder_key(k)): v for k, v in state.items()}
    head = {k: state.pop(k) for k in list(state) if k.split(".")[0] in HEAD_MODULES}
    missing, unexpected = unwrap(model).encoder.load_state_dict(state, strict=False)
    if with_head:
        head_missing, head_unexpected = unwrap(model).load_state_dict(head, strict=False)
        missing = [*missing, *(k for k in head_missing if k.split(".")[0] in HEAD_MODULES)]
        unexpected = [*unexpected, *head_unexpected]
    if missing or unexpected:
        raise ConfigError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
