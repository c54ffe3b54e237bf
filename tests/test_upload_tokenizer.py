"""The 24-hour budget's real tokenizer: a dataset laid out as cramming's hub upload, with a WordPiece tokenizer made
by cramming's recipe (its normaliser and pre-tokeniser, its special tokens in set order so that pad is not 0, its
`$A <sep>` single template), end to end: data, pretraining under both profiles, GLUE inputs and fine-tuning,
export and plain transformers."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import generic_text
from helpers.glue_data import make_glue, sentiment_words, write_parquet

from cramming_simple.cli import main
from cramming_simple.data import load_tokenizer
from cramming_simple.folders import load_model
from cramming_simple.glue.config import load_protocol
from cramming_simple.glue.data import Encoded, Examples, tokenize
from cramming_simple.model import ArchConfig, MaskedLM
from cramming_simple.train.config import PretrainConfig

# cramming's special tokens (tokenizer_preparation._get_sane_token_args), in one order `list(set(...))` can give
SPECIALS = ["<sep>", "<mask>", "</s>", "<cls>", "<unk>", "<s>", "<pad>"]
ROLES = dict(
    pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", cls_token="<cls>", sep_token="<sep>",
    mask_token="<mask>",
)  # fmt: skip


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
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    cls, sep = tok.token_to_id("<cls>"), tok.token_to_id("<sep>")
    tok.post_processor = processors.TemplateProcessing(  # include_sep_token_in_corpus, no cls: "$A <sep>"; and
        single="$A <sep>",  # use_type_ids: False (config/data/the-pile.yaml): type id 0 for both texts of a pair
        pair="<cls>:0 $A:0 <sep>:0 $B:0 <sep>:0",
        special_tokens=[("<cls>", cls), ("<sep>", sep)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, **ROLES)


@pytest.fixture(scope="module")
def upload(tmp_path_factory) -> Path:
    """DIR/data/train-*.parquet (input_ids, 128 per row, documents joined by the template's <sep>) and
    DIR/tokenizer/ (tokenizer.json), as JonasGeiping/the_pile_WordPiece... is laid out."""
    repo = tmp_path_factory.mktemp("upload") / "user--pile-readymade"
    texts = generic_text(3000, seed=11)
    tokenizer = cramming_tokenizer(texts, vocab_size=600)
    assert tokenizer.pad_token_id == SPECIALS.index("<pad>") != 0
    tokenizer.save_pretrained(str(repo / "tokenizer"))
    stream = np.concatenate([np.asarray(ids) for ids in tokenizer(texts)["input_ids"]])  # "$A <sep>" per document
    rows = stream[: len(stream) // 128 * 128].reshape(-1, 128)
    (repo / "data").mkdir()
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pd.DataFrame({"input_ids": list(part)}).to_parquet(repo / "data" / f"train-0000{i}-of-00002.parquet")
    return repo


def pretrain_upload(upload: Path, runs: Path, budget: str, cache: Path) -> Path:
    data = ["data.source=hub-pretokenized", f"data.name={upload}", "data.column=input_ids", f"data.cache_dir={cache}"]
    assert main(["data", "--budget", budget, *data]) == 0  # prepared ahead, as `make data` does
    args = [
        "pretrain", "--block", "sas", "--budget", budget, "--runs-dir", str(runs), *data, "impl.device=cpu",
        "hours=0.0008", "data.holdout=64",
    ]  # fmt: skip
    assert main(args) == 0
    return runs / f"sas-{budget}"


@pytest.fixture(scope="module")
def upload_runs(upload, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("upload-runs")
    return {b: pretrain_upload(upload, root / "runs", b, root / "cache") for b in ("smoke", "smoke-published")}


def test_the_fixture_tokenizer_normalises_and_types_pairs_as_crammings(upload):
    """cramming's normaliser for the Pile (strip_accents: NFD, then StripAccents) keeps a word's letters where an
    NFC text has composed accents, and its pair template gives both texts type id 0 (use_type_ids: False)."""
    tokenizer = load_tokenizer(upload / "tokenizer")
    assert tokenizer.backend_tokenizer.normalizer.normalize_str("Caf\u00e9 na\u00efve") == "cafe naive"
    assert set(tokenizer.backend_tokenizer.encode("the film", "was good").type_ids) == {0}


def test_a_tokenizer_whose_pad_is_not_0_pretrains_with_its_own_padding_index(upload, upload_runs):
    """The clean profile's padding row is the tokenizer's pad; the published one's is row 0 whatever the pad id
    (cramming's arch configs fix padding_idx 0), here the upload's <sep>: zero at init, no gradient from lookups."""
    tokenizer = load_tokenizer(upload / "tokenizer")
    pad = tokenizer.pad_token_id
    for budget, run in upload_runs.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["completed"] and summary["arch"]["pad_token_id"] == pad, budget
        config = json.loads((run / "model" / "config.json").read_text())
        assert {k: config[k] for k in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")} == {
            "pad_token_id": pad,
            "cls_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "mask_token_id": tokenizer.mask_token_id,
        }
        row = 0 if budget == "smoke-published" else pad  # the embedding's padding row under each profile
        assert summary["arch"]["embedding_padding"] == ("row0" if budget == "smoke-published" else "pad")
        fresh = MaskedLM(ArchConfig.from_dict(summary["arch"]), "sas").encoder.embedding.tokens
        assert fresh.padding_idx == row and fresh.weight[row].abs().max() == 0  # the padding row starts at zero
        assert fresh.weight[pad if row == 0 else 0].abs().max() > 0  # the other one is an ordinary row
        model = load_model(run / "model")
        embedding = model.encoder.embedding.tokens  # (the tied decoder trains that row: it is a logit too)
        assert embedding.padding_idx == row
        ids = torch.tensor([[tokenizer.cls_token_id, 50, 51, 0, pad, pad]])
        model.encoder(ids, ids != pad).sum().backward()
        assert embedding.weight.grad[row].abs().max() == 0
        assert embedding.weight.grad[pad if row == 0 else 0].abs().max() > 0
    assert json.loads((upload_runs["smoke-published"] / "summary.json").read_text())["profile"] == "published"


def test_glue_inputs_start_with_cls_whatever_the_tokenizers_template(upload, tmp_path):
    tokenizer = load_tokenizer(upload / "tokenizer")
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    one = Examples([["the film was good", "a dull movie " * 80]], np.array([1, 0]))
    two = Examples([["the film", "a movie " * 80], ["was good", "was dull"]], np.array([1, 0]))
    assert tokenizer("the film was good")["input_ids"][0] != cls  # its own template: "$A <sep>", no cls
    clean = tokenize(tokenizer, one, 16)
    cramming = tokenize(tokenizer, one, 16, single_text="cramming")
    pairs = tokenize(tokenizer, two, 16)
    words = tokenizer("the film was good", add_special_tokens=False)["input_ids"]
    assert clean[0] == [cls, *words, sep] and cramming[0] == [cls, *words, sep, sep]
    assert len(clean[1]) == len(cramming[1]) == 16 and clean[1][-1] == sep and cramming[1][-2:] == [sep, sep]
    assert pairs[0][0] == cls and pairs[0].count(sep) == 2 and pairs[0][-1] == sep and len(pairs[1]) == 16
    ids, mask, _ = next(Encoded(clean, one.labels, torch.device("cpu"), pad).batches(np.arange(2), 2))
    assert (ids[~mask] == pad).all() and ids.shape[1] == 16

    # `glue --show-inputs`: what the model is fed, for a one-sentence task, under both protocols
    data = write_parquet(
        make_glue({"default": 24}, n_eval=8, words=sentiment_words(tokenizer)), tmp_path / "glue"
    )  # fmt: skip
    shown = {}
    for protocol in ("smoke", "smoke-published"):
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["glue", str(upload_model(upload, tmp_path)), "--protocol", protocol, "--tasks", "cola,sst2",
                         "--data-dir", str(data), "--show-inputs", "2"])  # fmt: skip
        assert code == 0
        shown[protocol] = [line.strip() for line in stdout.getvalue().splitlines() if line.startswith("  ")]
        assert not list((tmp_path / "upload-run").glob("glue/*/seed*.json"))  # nothing trained
    assert len(shown["smoke"]) == 4 and all(line.startswith("<cls> ") for lines in shown.values() for line in lines)
    assert all(line.endswith(" <sep>") and not line.endswith("<sep> <sep>") for line in shown["smoke"])
    assert all(line.endswith("<sep> <sep>") for line in shown["smoke-published"])


def upload_model(upload: Path, tmp_path: Path) -> Path:
    """A run folder whose model/ is a small model saved with the upload's tokenizer (no pretraining needed)."""
    from cramming_simple.folders import save_model
    from cramming_simple.model import MaskedLM, arch_config

    run = tmp_path / "upload-run"
    if not run.exists():
        tokenizer = load_tokenizer(upload / "tokenizer")
        model = MaskedLM(arch_config("tiny", pad_token_id=tokenizer.pad_token_id), "preln")
        save_model(model, run / "model", tokenizer)
    return run


def test_glue_fine_tunes_and_exports_a_model_of_the_upload_for_plain_transformers(upload, upload_runs, tmp_path):
    tokenizer = load_tokenizer(upload / "tokenizer")
    data = write_parquet(make_glue({"default": 24}, n_eval=8, words=sentiment_words(tokenizer)), tmp_path / "glue")
    fast = ["epochs=1", "max_train_examples=16", "max_eval_examples=8", "--seeds", "1"]
    for budget, protocol in (("smoke", "smoke"), ("smoke-published", "smoke-published")):
        run = upload_runs[budget]
        args = ["glue", str(run), "--protocol", protocol, "--tasks", "cola,sst2", "--data-dir", str(data), *fast]
        assert main(args) == 0
        result = json.loads((run / "glue" / "cola" / "seed1.json").read_text())
        assert result["status"] == "ok" and result["protocol"] == protocol
    protocol = load_protocol("smoke-published")[1]
    assert protocol.single_text == "cramming" and protocol.drop_last

    run = upload_runs["smoke"]
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "export")]) == 0
    script = f"""
import sys, json, torch
sys.modules["cramming_simple"] = None
from transformers import AutoModelForMaskedLM, AutoTokenizer
model = AutoModelForMaskedLM.from_pretrained({str(tmp_path / "export")!r}, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained({str(tmp_path / "export")!r}, trust_remote_code=True)
batch = tok(["the film was good", "a movie"], padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
print(json.dumps({{"pad": model.config.pad_token_id, "tok_pad": tok.pad_token_id, "ids": batch["input_ids"].tolist(),
                  "padding_idx": model.encoder.embedding.tokens.padding_idx, "logits": logits[0, 0, :5].tolist()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    pad = tokenizer.pad_token_id
    assert got["pad"] == got["tok_pad"] == got["padding_idx"] == pad
    assert got["ids"][1][-1] == pad  # the shorter text padded with the tokenizer's pad
    model = load_model(run / "model").eval()
    ids = torch.tensor(got["ids"])
    with torch.no_grad():
        mine = model.logits(ids, ids != pad)[0, 0, :5]
    torch.testing.assert_close(mine, torch.tensor(got["logits"]), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ cramming's batches


def test_published_glue_batches_drop_the_last_partial_batch_as_crammings_dataloader():
    from cramming_simple.glue.finetune import epoch_order, schedule_steps

    paper, published = load_protocol("paper")[1], load_protocol("published")[1]
    cola = 8551  # CoLA's training examples: 267 full batches of 32 and one of 7
    assert schedule_steps(cola, paper) == (5 * 268, 134)
    assert schedule_steps(cola, published, first_task_examples=cola) == (5 * 267, 133)  # cramming's 133
    rng = np.random.default_rng(0)
    order = epoch_order(published, 70, rng)
    assert len(order) == 64 and len(set(order.tolist())) == 64
    stored = load_protocol("paper", ["train_order=stored", "drop_last=true"])[1]
    assert epoch_order(stored, 70, rng).tolist() == list(range(64)) == epoch_order(stored, 70, rng).tolist()
    assert len(epoch_order(paper, 70, rng)) == 70


def test_the_published_pretraining_stops_at_its_microbatch_cap(smoke_cache, tmp_path):
    from conftest import smoke_config

    from cramming_simple.train.loop import pretrain

    cfg = smoke_config(smoke_cache, "preln", 60.0, "train.max_microbatches=6", "impl.log_seconds=0.5", name="capped")
    summary = pretrain(cfg, tmp_path)
    assert summary["completed"] and summary["stop_reason"] == "max_microbatches" and summary["microbatch_steps"] == 6
    assert summary["elapsed_s"] < 60 and (tmp_path / "capped" / "model" / "config.json").exists()
    assert PretrainConfig.from_budget("24h-published", "sas").train.max_microbatches == 900_000
    assert PretrainConfig.from_budget("24h", "sas").train.max_microbatches is None


def test_check_model_refuses_a_config_whose_pad_is_not_the_embeddings(upload, tmp_path):
    from cramming_simple.errors import CorruptFileError
    from cramming_simple.folders import check_model

    model = upload_model(upload, tmp_path) / "model"
    assert check_model(model)[0].pad_token_id == load_tokenizer(upload / "tokenizer").pad_token_id
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "pad_token_id": 0}))
    with pytest.raises(CorruptFileError, match="padding index"):
        check_model(model)


def test_drop_last_with_fewer_examples_than_a_batch_fails_before_training():
    from cramming_simple.config import ConfigError
    from cramming_simple.glue.data import check_counts

    examples = Examples([["a", "b", "c"]], np.array([0, 1, 0]))
    protocol = load_protocol("smoke-published", ["batch_size=4"])[1]
    with pytest.raises(ConfigError, match="fill no batch"):
        check_counts("cola", {"train": examples, "validation": examples}, protocol)
    check_counts("cola", {"train": examples, "validation": examples}, load_protocol("smoke", ["batch_size=4"])[1])


@pytest.mark.parametrize("masking", ["clean", "cramming"])
def test_both_masking_rules_leave_the_tokenizers_pad_alone(upload, masking):
    from cramming_simple.data import MLMCollator

    tokenizer = load_tokenizer(upload / "tokenizer")
    pad = tokenizer.pad_token_id
    collate = MLMCollator.for_tokenizer(tokenizer, 16, 0.25, seed=0, masking=masking)
    rows = np.full((64, 16), pad)
    rows[:, :10] = np.random.default_rng(0).integers(len(SPECIALS), len(tokenizer), (64, 10))  # 10 words, 6 pads
    batch = collate(rows, np.arange(64))
    chosen = np.take_along_axis(rows, batch["positions"].numpy(), axis=1)
    labels = batch["labels"].numpy()
    assert (chosen[labels != -100] != pad).all()  # never a pad position, whichever id pad has
    assert (labels != -100).sum() > 0
