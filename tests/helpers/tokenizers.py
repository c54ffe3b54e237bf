"""A tokenizer laid out as cramming's uploads are, for the upload tests."""

from __future__ import annotations

from pathlib import Path

from cramming_simple.data import load_tokenizer
from cramming_simple.model import MaskedLM

# cramming's special tokens (tokenizer_preparation._get_sane_token_args), in one order `list(set(...))` can give
UPLOAD_SPECIALS = ["<sep>", "<mask>", "</s>", "<cls>", "<unk>", "<s>", "<pad>"]
ROLES = dict(
    pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", cls_token="<cls>", sep_token="<sep>",
    mask_token="<mask>",
)  # fmt: skip


def upload_model(upload: Path, tmp_path: Path) -> Path:
    """A run folder whose model/ is a small model saved with the upload's tokenizer (no pretraining needed)."""
    from cramming_simple.folders import save_model
    from cramming_simple.model import arch_config

    run = tmp_path / "upload-run"
    if not run.exists():
        tokenizer = load_tokenizer(upload / "tokenizer")
        model = MaskedLM(arch_config("tiny", pad_token_id=tokenizer.pad_token_id), "preln")
        save_model(model, run / "model", tokenizer)
    return run


def cramming_tokenizer(texts: list[str], vocab_size: int):
    """A WordPiece tokenizer made as cramming's `_construct_tokenizer` made the upload's."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(  # _get_sane_normalizers(force_lowercase, strip_accents, english keyboard)
        [
            normalizers.Replace("``", '"'),
            normalizers.Replace("''", '"'),
            normalizers.NFD(),  # strip_accents: NFD first, so that StripAccents finds the accents to strip
            normalizers.Lowercase(),
            normalizers.StripAccents(),
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Replace(Regex(r"[^\x00-\x7F]+"), ""),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=UPLOAD_SPECIALS))
    cls, sep = tok.token_to_id("<cls>"), tok.token_to_id("<sep>")
    tok.post_processor = processors.TemplateProcessing(  # include_sep_token_in_corpus, no cls: "$A <sep>"; and
        single="$A <sep>",  # use_type_ids: False (config/data/the-pile.yaml): type id 0 for both texts of a pair
        pair="<cls>:0 $A:0 <sep>:0 $B:0 <sep>:0",
        special_tokens=[("<cls>", cls), ("<sep>", sep)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **ROLES)
