"""WordPiece tokenizers (docs/recipe.md), trained with `tokenizers`, used as `transformers` fast tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..config import ConfigError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # ids 0..4 in a trained tokenizer: pad is 0, the embedding's padding index


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
    path = Path(path)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise ConfigError(f"no tokenizer at {path} (expected tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(path))


def check_tokenizer(tokenizer: PreTrainedTokenizerFast, vocab_size: int, where: str = "tokenizer") -> None:
    """A tokenizer fits a model when every id it makes is an embedding row and its pad id is the padding index 0."""
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"{where} has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size}: they do not match"
        )
    if tokenizer.pad_token_id != 0:
        raise ConfigError(f"{where} pads with id {tokenizer.pad_token_id}; the model's padding index is 0")
