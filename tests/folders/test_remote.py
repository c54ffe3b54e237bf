"""cramming_simple/folders/remote.py: saved models load in transformers without cramming-simple, through the generated
modeling file, which computes what the package computes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers.commands import cli
from helpers.hub import python
from safetensors.torch import load_file, save_file

from cramming_simple.config import ConfigError
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import load_model, save_model
from cramming_simple.folders.remote import MODELING_FILE, RemoteCodeUnavailable, modeling_source
from cramming_simple.model import BLOCKS, MaskedLM, arch_config
from cramming_simple.runs import MODEL

ROOT = Path(__file__).resolve().parents[2]


def batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["the film was good and the music was great", f"a dull {tokenizer.mask_token} story"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False))


def test_saved_models_load_with_transformers_where_cramming_simple_is_missing(block_runs, tmp_path):
    """AutoConfig / AutoModel / AutoModelForMaskedLM with trust_remote_code on run/model as pretraining saved it:
    logits equal to the harness's MaskedLM.logits (atol 1e-5), hidden states equal, the loss of `labels`; and
    the fill-mask pipeline."""
    expected = {}
    for block, run in block_runs.items():
        folder = run / MODEL
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "cramming-simple-bert" and "AutoModelForMaskedLM" in config["auto_map"]
        assert (folder / MODELING_FILE).is_file()
        # a class name transformers 4 knows as well (5 calls its fast tokenizers TokenizersBackend)
        assert (
            json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
        )
        model = load_model(folder).eval()
        inputs = batch(load_tokenizer(folder))
        with torch.no_grad():
            logits = model.logits(inputs["input_ids"], inputs["attention_mask"])
            hidden = model.encoder(inputs["input_ids"], inputs["attention_mask"])
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 1] = inputs["input_ids"][:, 1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        torch.save({**inputs, "labels": labels, "logits": logits, "hidden": hidden}, tmp_path / f"{block}.pt")
        expected[block] = float(loss)

    out = python(
        """
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, pipeline
        try:
            import cramming_simple
            raise SystemExit("cramming_simple is importable")
        except ImportError:
            pass
        report = {}
        for block, folder in zip(sys.argv[1::2], sys.argv[2::2]):
            ref = torch.load(f"{block}.pt")
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
            base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out = mlm(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
                hidden = base(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).last_hidden_state
            report[block] = {
                "config": [type(config).__name__, config.block, config.hidden_size, config.num_hidden_layers],
                "classes": [type(mlm).__module__.split(".")[0], type(base).__name__],
                "logits": (out.logits - ref["logits"]).abs().max().item(),
                "hidden": (hidden - ref["hidden"]).abs().max().item(),
                "loss": out.loss.item(),
            }
        fill = pipeline("fill-mask", model=sys.argv[2], trust_remote_code=True)
        report["fill"] = fill(f"the film was {fill.tokenizer.mask_token} .")
        print(json.dumps(report))
        """,
        tmp_path,
        *[str(x) for block, run in block_runs.items() for x in (block, run / MODEL)],
    )
    for block in block_runs:
        got = out[block]
        assert got["config"] == ["CrammingSimpleConfig", block, 128, 2]
        assert got["classes"] == ["transformers_modules", "CrammingSimpleModel"]  # the folder's code, not ours
        assert got["logits"] <= 1e-5 and got["hidden"] <= 1e-5, got
        assert got["loss"] == pytest.approx(expected[block], abs=1e-5)
    assert len(out["fill"]) == 5 and all(p["token_str"] and 0 < p["score"] <= 1 for p in out["fill"])


@pytest.mark.parametrize("block", list(BLOCKS))
def test_the_generated_file_computes_what_the_package_computes_for_every_block(block, monkeypatch):
    """The generated text, executed as its own module, gives the harness's logits for all seven blocks (the
    subprocess test above covers three of them end to end)."""
    torch.manual_seed(0)
    model = MaskedLM(arch_config("tiny", vocab_size=512), block).eval()
    generated = types.ModuleType("generated_modeling")
    monkeypatch.setitem(sys.modules, generated.__name__, generated)
    exec(compile(modeling_source(model.encoder.spec, "test"), MODELING_FILE, "exec"), generated.__dict__)
    config = generated.CrammingSimpleConfig(block=block, arch=dataclasses.asdict(model.encoder.cfg))
    hf = generated.CrammingSimpleForMaskedLM(config).eval()
    hf.load_state_dict(model.state_dict())
    ids, mask = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]]), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    assert type(hf.encoder).__module__ == "generated_modeling"
    assert torch.equal(hf(input_ids=ids, attention_mask=mask).logits, model.logits(ids, mask))


def test_an_old_run_folder_still_loads_and_exports_as_a_transformers_folder(block_runs, tmp_path):
    """A folder saved before the Hugging Face keys (weights without 'encoder.', no model_type, no modeling file)."""
    old = tmp_path / "old" / MODEL
    shutil.copytree(block_runs["preln"] / MODEL, old)
    state = {k.removeprefix("encoder."): v for k, v in load_file(str(old / "model.safetensors")).items()}
    save_file(state, str(old / "model.safetensors"))
    config = json.loads((old / "config.json").read_text())
    legacy = {k: config[k] for k in ("format", "block", "block_title", "block_source", "arch")}
    (old / "config.json").write_text(json.dumps(legacy))
    (old / MODELING_FILE).unlink()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    new = load_model(block_runs["preln"] / MODEL).eval()
    assert torch.equal(load_model(old).eval().logits(ids), new.logits(ids))
    shutil.copy(block_runs["preln"] / "summary.json", old.parent / "summary.json")
    shutil.copy(block_runs["preln"] / "config.yaml", old.parent / "config.yaml")
    assert cli("export", str(old.parent), "--out", str(tmp_path / "e"))[0] == 0
    torch.save({"ids": ids, "logits": new.logits(ids)}, tmp_path / "ref.pt")
    got = python(
        """
        import json, torch
        from transformers import AutoModelForMaskedLM
        ref = torch.load("ref.pt")
        model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        print(json.dumps((model(input_ids=ref["ids"]).logits - ref["logits"]).abs().max().item()))
        """,
        tmp_path,
        str(tmp_path / "e"),
    )
    assert got <= 1e-5


def test_a_user_block_travels_when_it_imports_only_the_model_package(tmp_path):
    """examples/blocks/rezero.py imports cramming_simple.model names: they resolve inside the generated file."""
    torch.manual_seed(0)
    model = MaskedLM(arch_config("tiny", vocab_size=512), f"{ROOT}/examples/blocks/rezero.py:ReZero").eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.beta_sa.fill_(0.5)
            layer.beta_ff.fill_(0.3)
    save_model(model, tmp_path / "m")
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    torch.save({"ids": ids, "logits": model.logits(ids)}, tmp_path / "ref.pt")
    got = python(
        """
        import json, torch
        from transformers import AutoModelForMaskedLM
        ref = torch.load("ref.pt")
        model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        print(json.dumps([type(model.encoder.layers[0]).__name__,
                          (model(input_ids=ref["ids"]).logits - ref["logits"]).abs().max().item()]))
        """,
        tmp_path,
        str(tmp_path / "m"),
    )
    assert got[0] == "ReZero" and got[1] <= 1e-5


BLOCK_NEEDING_THE_HARNESS = """
import torch
from torch import nn
from cramming_simple.model.layers import GLU
from cramming_simple.runtime import seed_everything  # not model code: cannot travel


class NeedsHarness(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.mlp = GLU(cfg)

    def forward(self, x, mask):
        return x + self.mlp(x)
"""


def test_a_user_block_that_needs_more_of_the_harness_is_saved_without_remote_code(tmp_path, caplog):
    path = tmp_path / "needs.py"
    path.write_text(BLOCK_NEEDING_THE_HARNESS)
    model = MaskedLM(arch_config("tiny", vocab_size=512), f"{path}:NeedsHarness")
    with pytest.raises(RemoteCodeUnavailable, match="line 5 imports cramming_simple.runtime"):
        modeling_source(model.encoder.spec, "test")
    save_model(model, tmp_path / "m")  # never lost: saved, with a warning, without auto_map
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "auto_map" not in config and not (tmp_path / "m" / MODELING_FILE).exists()
    assert "cramming_simple.runtime" in caplog.text
    assert isinstance(load_model(tmp_path / "m"), MaskedLM)

    run = tmp_path / "run"
    (run / MODEL).parent.mkdir()
    shutil.copytree(tmp_path / "m", run / MODEL)
    code, _, err = cli("export", str(run), "--out", str(tmp_path / "e"))
    assert code == 2 and "cannot carry" in err and len(err.strip().splitlines()) == 1


def test_what_the_generated_modeling_file_needs_is_declared_and_defined(monkeypatch):
    from cramming_simple.folders import remote
    from cramming_simple.model import block_spec

    assert remote.outside_imports() == remote.NEEDS  # the interface, read off the sources
    assert set().union(*remote.NEEDS.values()) <= remote._defined(remote._glue_code())  # and the file defines it
    monkeypatch.setattr(
        remote, "outside_imports", lambda: {**remote.NEEDS, "cramming_simple.runtime": {"autocast"}}
    )  # a model source that started to import from the runtime: refused at save time
    with pytest.raises(ConfigError, match="cramming_simple.runtime"):
        remote.modeling_source(block_spec("sas"), "test")
