"""End to end with the 24-hour budget's real tokenizer: a dataset laid out as cramming's hub upload, with a WordPiece
tokenizer made by cramming's recipe (pad is not 0), pretrained, fine-tuned and exported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.glue_data import make_glue, sentiment_words, write_parquet

from cramming_simple.cli import main
from cramming_simple.data import load_tokenizer
from cramming_simple.folders import load_model
from cramming_simple.glue.config import load_protocol
from cramming_simple.model import ArchConfig, MaskedLM


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
