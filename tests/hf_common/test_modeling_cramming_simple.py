"""transformers' own common model tests (ModelTesterMixin) against the three classes, for every
block, written the way an in-tree model's tests are. `make test-hf` fetches the test modules of the installed
transformers version (tests/hf_common/fetch.py) and runs this file; `make test` leaves it out (it needs them).

What cannot apply to these models is skipped below, each with its reason, and listed in docs/huggingface.md.
"""

from __future__ import annotations

import os
import sys
import unittest

sys.path.insert(0, os.environ["CRAMMING_SIMPLE_HF_TESTS"])  # set by `make test-hf`: the fetched test modules

import torch  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402
from transformers_tests.test_modeling_common import (  # noqa: E402
    ModelTesterMixin,
    ids_tensor,
    random_attention_mask,
)

from cramming_simple.model.blocks import BLOCKS  # noqa: E402
from cramming_simple.model.config import MODEL_TYPE  # noqa: E402
from cramming_simple.model.hf import (  # noqa: E402
    CrammingSimpleConfig,
    CrammingSimpleForMaskedLM,
    CrammingSimpleForSequenceClassification,
    CrammingSimpleModel,
)

# An in-tree model has its entries in transformers' auto tables (models/auto/modeling_auto.py); the common tests
# read them by name to tell a base model from a head and to make a head's labels. Ours, the same way.
modeling_auto.MODEL_MAPPING_NAMES[MODEL_TYPE] = "CrammingSimpleModel"
modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES[MODEL_TYPE] = "CrammingSimpleForMaskedLM"
modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES[MODEL_TYPE] = "CrammingSimpleForSequenceClassification"


class CrammingSimpleModelTester:
    """Tiny configs and inputs, as transformers' model testers make them."""

    def __init__(self, parent, block, batch_size=13, seq_length=7, vocab_size=99, hidden_size=32, num_labels=3):
        self.parent, self.block = parent, block
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = hidden_size, 2, 4
        self.num_labels, self.is_training = num_labels, True

    def arch(self) -> dict:
        return {
            "preset": "tiny",
            "vocab_size": self.vocab_size,
            "width": self.hidden_size,
            "depth": self.num_hidden_layers,
            "heads": self.num_attention_heads,
            "glu_width": 2 * self.hidden_size,
            "seq_len": 64,
            "dropout": 0.1,
        }

    def get_config(self) -> CrammingSimpleConfig:
        return CrammingSimpleConfig(block=self.block, arch=self.arch(), num_labels=self.num_labels)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), input_ids, attention_mask, labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}

    def create_and_check_model(self, config, input_ids, attention_mask, labels):
        model = CrammingSimpleModel(config).eval()
        out = model(input_ids, attention_mask=attention_mask)
        shape = (self.batch_size, self.seq_length, self.hidden_size)
        self.parent.assertEqual(out.last_hidden_state.shape, shape)

    def create_and_check_for_masked_lm(self, config, input_ids, attention_mask, labels):
        model = CrammingSimpleForMaskedLM(config).eval()
        out = model(input_ids, attention_mask=attention_mask, labels=input_ids)
        self.parent.assertEqual(out.logits.shape, (self.batch_size, self.seq_length, self.vocab_size))
        self.parent.assertTrue(torch.isfinite(out.loss))

    def create_and_check_for_sequence_classification(self, config, input_ids, attention_mask, labels):
        model = CrammingSimpleForSequenceClassification(config).eval()
        out = model(input_ids, attention_mask=attention_mask, labels=labels)
        self.parent.assertEqual(out.logits.shape, (self.batch_size, self.num_labels))
        self.parent.assertTrue(torch.isfinite(out.loss))


class CrammingSimplePreLNModelTest(ModelTesterMixin, unittest.TestCase):
    block = "preln"
    all_model_classes = (CrammingSimpleModel, CrammingSimpleForMaskedLM, CrammingSimpleForSequenceClassification)

    def setUp(self):
        self.model_tester = CrammingSimpleModelTester(self, self.block)

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_masked_lm(self):
        self.model_tester.create_and_check_for_masked_lm(*self.model_tester.prepare_config_and_inputs())

    def test_for_sequence_classification(self):
        self.model_tester.create_and_check_for_sequence_classification(*self.model_tester.prepare_config_and_inputs())


# One test class per block: the same tests, another block.
for _name in BLOCKS:
    if _name != "preln":
        _title = "".join(part.capitalize() for part in _name.replace("-", "_").split("_"))
        globals()[f"CrammingSimple{_title}ModelTest"] = type(
            f"CrammingSimple{_title}ModelTest", (CrammingSimplePreLNModelTest,), {"block": _name}
        )
