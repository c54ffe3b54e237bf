"""WordPiece tokenizers (docs/recipe.md), trained with `tokenizers`, used as `transformers` fast tokenizers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..config import ConfigError
from ..model.config import special_ids

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in a tokenizer trained here (others may number them otherwise)


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a WordPiece tokenizer: NFD, lowercase, strip accents; whitespace pre-tokeniser; BERT templates."""
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    )
    cls, sep = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls), (SEP, sep)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, cls_token=CLS, sep_token=SEP, mask_token=MASK
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The fast tokenizer in a folder. Ours (and cramming's uploads) always hold a tokenizer.json: it is read as
    it is, without `AutoTokenizer`, which would read the folder's config.json, find the model's `auto_map` and
    ask on a terminal whether to run remote code (the harness's own folders need none)."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    if not (path / "tokenizer_config.json").exists():
        raise ConfigError(f"no tokenizer at {path} (expected tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def tokenizer_sha256(tokenizer: PreTrainedTokenizerFast) -> str:
    """The identity of a tokenizer: sha256 of its token -> id table and its special tokens' ids. Two tokenizers
    with the same hash give every text the same ids (a retrained WordPiece that breaks ties otherwise does not)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    names = ("pad", "unk", "cls", "sep", "mask")
    specials = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id", None) for k in names}
    return hashlib.sha256(json.dumps([vocab, specials], sort_keys=True).encode()).hexdigest()


def check_tokenizer(
    tokenizer: PreTrainedTokenizerFast, vocab_size: int, where: str = "tokenizer", pad_token_id: int | None = None
) -> None:
    """A tokenizer fits a model when every id it makes is an embedding row, it names the special tokens the
    harness uses, and (given the model's padding index) it pads with that id."""
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"{where} has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}: they do not match"
        )
    missing = [name for name, i in special_ids(tokenizer).items() if i is None]
    if missing:
        raise ConfigError(f"{where} has no {', '.join(m.removesuffix('_id') for m in missing)}")
    if pad_token_id is not None and tokenizer.pad_token_id != pad_token_id:
        raise ConfigError(f"{where} pads with id {tokenizer.pad_token_id}; the model's padding index is {pad_token_id}")
