"""cramming_simple/data/tokenizer.py: the WordPiece tokenizer, its special ids, its truncation, and the upload's
tokenizer."""

from __future__ import annotations

from pathlib import Path

from conftest import SMOKE_VOCAB
from helpers.data import SPECIALS

from cramming_simple.data import (
    load_tokenizer,
)


def test_tokenizer_round_trip_and_special_ids(smoke_cache):
    tok = load_tokenizer(next(Path(smoke_cache).glob("*/tokenizer")))
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == SPECIALS
    assert len(tok) == SMOKE_VOCAB
    text = "Return a new list containing all items from the iterable in ascending order."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")  # lowercased, nothing lost
    assert tok(decoded, add_special_tokens=False)["input_ids"] == ids
    assert (
        tok("Émile", add_special_tokens=False)["input_ids"] == tok("emile", add_special_tokens=False)["input_ids"]
    )  # accents stripped
    pair = tok("first one", "second")["input_ids"]
    assert pair[0] == tok.cls_token_id and pair.count(tok.sep_token_id) == 2 and pair[-1] == tok.sep_token_id


def test_the_saved_tokenizer_truncates_at_the_models_sequence_length(pretrained_run):
    tokenizer = load_tokenizer(pretrained_run / "model")
    assert tokenizer.model_max_length == 128
    ids = tokenizer("the film was good " * 200, truncation=True)["input_ids"]
    assert len(ids) == 128 and ids[-1] == tokenizer.sep_token_id


def test_the_fixture_tokenizer_normalises_and_types_pairs_as_crammings(upload):
    """cramming's normaliser for the Pile (strip_accents: NFD, then StripAccents) keeps a word's letters where an
    NFC text has composed accents, and its pair template gives both texts type id 0 (use_type_ids: False)."""
    tokenizer = load_tokenizer(upload / "tokenizer")
    assert tokenizer.backend_tokenizer.normalizer.normalize_str("Caf\u00e9 na\u00efve") == "cafe naive"
    assert set(tokenizer.backend_tokenizer.encode("the film", "was good").type_ids) == {0}
