"""cramming_simple/autoregister.py: importing cramming_simple registers the classes; the command line skips it."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.hub import python

from cramming_simple.folders import load_model
from cramming_simple.folders.remote import MODELING_FILE
from cramming_simple.model import SequenceClassifier
from cramming_simple.runs import MODEL


def test_importing_cramming_simple_registers_the_classes_and_their_saves_load_in_the_harness(block_runs, tmp_path):
    out = python(
        """
        import json, sys
        import cramming_simple
        import torch
        early = "transformers" in sys.modules  # the registration waits for transformers to be imported
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification
        mlm = AutoModelForMaskedLM.from_pretrained(sys.argv[1])  # no trust_remote_code: the registered classes
        clf = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1)
        ids = torch.tensor([[2, 5, 9, 3]])
        clf.save_pretrained("hf-saved")  # as transformers' Trainer saves: a folder the harness and others load
        print(json.dumps({"early": early, "mlm": type(mlm).__module__, "clf": [type(clf).__name__,
              clf.config.problem_type, clf.eval()(input_ids=ids).logits.tolist()]}))
        """,
        tmp_path,
        str(block_runs["sas"] / MODEL),
        harness=True,
    )
    logits = out["clf"].pop()
    assert out == {
        "early": False,
        "mlm": "cramming_simple.model.hf",
        "clf": ["CrammingSimpleForSequenceClassification", "regression"],
    }
    saved = tmp_path / "hf-saved"
    assert (saved / MODELING_FILE).is_file() and "auto_map" in json.loads((saved / "config.json").read_text())
    model = load_model(saved).eval()
    assert isinstance(model, SequenceClassifier) and model.num_labels == 1
    assert model(torch.tensor([[2, 5, 9, 3]]))[0].flatten().tolist() == pytest.approx(logits[0], abs=1e-6)


def test_the_command_line_and_its_workers_skip_the_registration_and_its_imports(tmp_path):
    """A command reads tokenizers through transformers but never loads a folder with the Auto classes: its
    process does not pay for transformers' model classes (1.2 s), nor do the processes it starts."""
    script = """
        import json, os, subprocess, sys
        from cramming_simple.cli import main
        sys.argv = ["cramming-simple", "params", "--arch", "tiny", "--json"]
        main()  # as the console command calls it
        from transformers import AutoTokenizer  # what pretrain and glue import
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        child = "import cramming_simple, transformers, sys; print('transformers.modeling_utils' in sys.modules)"
        print(json.dumps({"heavy": "transformers.modeling_utils" in sys.modules,
              "registered": "cramming-simple-bert" in CONFIG_MAPPING,
              "child": subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip()}))
        """
    assert python(script, tmp_path, harness=True) == {"heavy": False, "registered": False, "child": "False"}
    library = "import json, sys\nimport cramming_simple\nfrom transformers import AutoTokenizer\n"
    library += "print(json.dumps('transformers.modeling_utils' in sys.modules))"
    assert python(library, tmp_path, harness=True) is True  # the same import without the command: registered
