"""cramming_simple/model/hf.py: the Hugging Face classes inside transformers' own machinery (Trainer, PEFT, accelerate,
SDPA), BERT's arguments and options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.models import ARCH, CLASSES, ids, tiny
from safetensors.torch import load_file, save_file

from cramming_simple.model import BLOCKS, SequenceClassifier
from cramming_simple.model.hf import (
    CrammingSimpleConfig,
    CrammingSimpleForMaskedLM,
    CrammingSimpleForSequenceClassification,
    CrammingSimpleModel,
)


def test_from_config_keeps_the_blocks_init_and_the_bert_names_read_and_write_arch():
    from cramming_simple.model.hf import CrammingSimpleConfig, CrammingSimpleForMaskedLM

    torch.manual_seed(0)
    config = CrammingSimpleConfig(
        block="sasp", arch={"preset": "tiny", "vocab_size": 512, "depth": 2, "width": 64, "heads": 2, "glu_width": 128}
    )
    model = CrammingSimpleForMaskedLM(config)
    d = 64
    assert model.encoder.layers[0].w_in.weight[:d].abs().max() == 0  # SAS-P's zero query init survives post_init
    assert model.encoder.embedding.sinusoid[0, 1] == 1.0
    assert (config.hidden_size, config.num_hidden_layers, config.max_position_embeddings) == (64, 2, 128)
    model.resize_token_embeddings(520)  # writes config.vocab_size: kept in arch, and the tied decoder follows
    assert config.vocab_size == config.arch["vocab_size"] == 520
    assert model(input_ids=torch.tensor([[2, 515, 3]])).logits.shape == (1, 3, 520)


def test_the_hugging_face_classes_honour_berts_options(pretrained_run, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    import cramming_simple  # noqa: F401 - registers the classes

    folder = pretrained_run / "model"
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = mlm(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    depth = mlm.config.num_hidden_layers
    assert len(out.hidden_states) == depth + 1 and out.hidden_states[0].shape == (2, 9, mlm.config.hidden_size)
    assert len(out.attentions) == depth and out.attentions[0].shape == (2, mlm.config.num_attention_heads, 9, 9)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, mlm.config.num_attention_heads, 9))
    assert out.attentions[0][1, :, :, 6:].abs().max() == 0  # padding keys get no attention
    plain = mlm(input_ids=ids, attention_mask=mask)
    assert plain.hidden_states is None and plain.attentions is None
    as_tuple = mlm(input_ids=ids, attention_mask=mask, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], plain.logits)

    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    classifier.train()
    labels = torch.tensor([0, 1])
    torch.manual_seed(0)
    loss = classifier(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = [p.grad.clone() for p in classifier.parameters()]
    classifier.zero_grad()
    enable = getattr(classifier, "activation_checkpointing_enable", None) or classifier.gradient_checkpointing_enable
    enable()  # transformers 5 renamed it; 4 has only the old name
    calls = []
    for layer in classifier.encoder.layers:  # each block checkpoints itself (a GradientCheckpointingLayer: model.hf)
        checkpointed = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, f=checkpointed, **k: calls.append(1) or f(*a, **k)
    torch.manual_seed(0)
    again = classifier(input_ids=ids, attention_mask=mask, labels=labels).loss
    again.backward()
    assert len(calls) == depth
    torch.testing.assert_close(again, loss)
    for a, b in zip(grads, (p.grad for p in classifier.parameters())):
        torch.testing.assert_close(a, b)


def test_trainer_accumulating_4_x_2_takes_the_step_of_1_x_8(tmp_path):
    """Same 8 examples, SGD, one optimizer step: 4 microbatches of 2 with gradient accumulation against one batch
    of 8. A forward that swallowed any keyword made Trainer pass num_items_in_batch and skip its own
    1/accumulation scaling: an update 4 times too large, and a logged loss 4 times too large."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    data = Dataset.from_dict(
        {"input_ids": ids(8, 12).tolist(), "attention_mask": [[1] * 12] * 8, "labels": [0, 1, 1, 0, 1, 0, 0, 1]}
    )
    steps = {}
    for batch, accumulate in ((8, 1), (2, 4)):
        model = tiny()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = TrainingArguments(
            output_dir=str(tmp_path / f"{batch}x{accumulate}"),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulate,
            max_steps=1,
            learning_rate=0.5,
            optim="sgd",
            lr_scheduler_type="constant",
            weight_decay=0.0,
            max_grad_norm=1e9,  # no clipping: the raw update is compared
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data)
        assert not trainer.model_accepts_loss_kwargs  # so Trainer scales by 1/accumulation itself
        trainer.train()
        update = {n: p.detach() - before[n] for n, p in model.named_parameters()}
        logged = next(row["loss"] for row in trainer.state.log_history if "loss" in row)
        steps[(batch, accumulate)] = (update, logged)
    (one, loss_one), (four, loss_four) = steps[(8, 1)], steps[(2, 4)]
    assert max((one[n] - four[n]).abs().max().item() for n in one) < 1e-5
    assert max(one[n].abs().max().item() for n in one) > 1e-3  # a real step, not two zero updates
    assert abs(loss_one - loss_four) < 1e-5, (loss_one, loss_four)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_forward_takes_berts_arguments_and_refuses_a_misspelt_one(cls):
    model, x = tiny(cls), ids()
    mask = torch.ones_like(x)
    with pytest.raises(TypeError):
        model(input_ids=x, atention_mask=mask)  # noqa - misspelt on purpose
    plain = model(input_ids=x, attention_mask=mask)[0]
    zeros = model(input_ids=x, attention_mask=mask, token_type_ids=torch.zeros_like(x))[0]
    assert torch.equal(plain, zeros)  # a single segment's type ids: accepted
    with pytest.raises(ValueError, match="no segment embeddings"):
        model(input_ids=x, attention_mask=mask, token_type_ids=torch.ones_like(x))
    vectors = model.get_input_embeddings()(x)
    assert torch.allclose(model(inputs_embeds=vectors, attention_mask=mask)[0], plain, atol=1e-6)
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        model(input_ids=x, inputs_embeds=vectors)


def test_inputs_embeds_carry_a_gradient_for_attribution():
    model, x = tiny(), ids()
    vectors = model.get_input_embeddings()(x).detach().requires_grad_()
    model(inputs_embeds=vectors).logits[:, 1].sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0


def test_classification_losses_are_the_ones_transformers_computes():
    x = ids(4)
    multi = tiny(num_labels=3, problem_type="multi_label_classification")
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    out = multi(input_ids=x, labels=targets)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets), atol=1e-6)
    inferred = tiny(num_labels=3)  # float labels, no problem_type: transformers infers multi-label
    out = inferred(input_ids=x, labels=targets)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets), atol=1e-6)
    single = tiny(num_labels=3)  # integer labels: cross-entropy, the harness's GLUE loss
    labels = torch.tensor([0, 2, 1, 2])
    out = single(input_ids=x, labels=labels)
    assert torch.allclose(out.loss, SequenceClassifier.loss(single, out.logits, labels), atol=1e-6)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels), atol=1e-6)
    regression = tiny(num_labels=1)
    scores = torch.tensor([0.5, 1.0, 4.0, 2.5])
    out = regression(input_ids=x, labels=scores)
    assert regression.config.problem_type == "regression"
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), scores), atol=1e-6)


def test_vskipinit_builds_in_bf16_with_its_orthogonal_init():
    config = CrammingSimpleConfig(block="vskipinit", arch=dict(ARCH))
    model = CrammingSimpleModel._from_config(config, dtype=torch.bfloat16)
    value = model.layers[0].attn.value.weight
    assert value.dtype == torch.bfloat16
    eye = torch.eye(value.shape[0])
    assert torch.allclose(value.float() @ value.float().T, eye, atol=0.05)


BLOCK_NAMES = tuple(BLOCKS)


def linear_names(model: torch.nn.Module) -> set[str]:
    """The attribute names of every Linear in the encoder (what a LoRA config targets): docs/huggingface.md."""
    return {name.rsplit(".", 1)[-1] for name, m in model.encoder.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_lora_on_every_linear_of_every_block_trains_and_merges(block):
    """peft's LoRA on every Linear: every adapter is used (gets a gradient, changes the output), and merging the
    adapters into the weights gives the adapted model's outputs. A projection read as `.weight` through
    F.linear would bypass its adapter."""
    from peft import LoraConfig, get_peft_model

    model, x = tiny(CrammingSimpleForMaskedLM, block), ids()
    base = model(input_ids=x).logits.detach()
    targets, layers = sorted(linear_names(model)), sum(isinstance(m, torch.nn.Linear) for m in model.encoder.modules())
    adapted = get_peft_model(model, LoraConfig(r=2, target_modules=targets, init_lora_weights=False))
    adapters = {n: p for n, p in adapted.named_parameters() if "lora_" in n}
    assert len(adapters) == 2 * layers  # A and B on every Linear
    logits = adapted(input_ids=x).logits
    logits.float().pow(2).mean().backward()
    assert not (logits.detach() - base).abs().max() < 1e-4  # a nonzero adapter changes the output
    silent = [n for n, p in adapters.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"adapters without a gradient: {silent}"
    with torch.no_grad():
        adapted_logits = adapted(input_ids=x).logits
        merged = adapted.merge_and_unload()
        assert (merged(input_ids=x).logits - adapted_logits).abs().max() < 1e-5


def test_a_weight_missing_from_a_folder_gets_the_harness_init(tmp_path):
    """from_pretrained on a folder that lacks some weights: each gets what the harness's constructor gives it
    (W^Q rows zero, a gain at its init value, an orthogonal W^V), not uninitialised memory."""

    for block, missing in (
        ("sas", ("encoder.layers.1.attn.qk.weight", "encoder.layers.1.beta_ff")),
        ("vskipinit", ("encoder.layers.0.attn.value.weight",)),
    ):
        folder = tmp_path / block
        tiny(CrammingSimpleForMaskedLM, block).save_pretrained(folder)
        weights = load_file(folder / "model.safetensors")
        save_file({k: v for k, v in weights.items() if k not in missing}, folder / "model.safetensors")
        loaded = CrammingSimpleForMaskedLM.from_pretrained(folder)
        state = loaded.state_dict()
        assert all(torch.isfinite(v).all() for v in state.values())
        for key in weights:
            if key not in missing:
                assert torch.equal(state[key], weights[key]), key  # what the folder holds is kept
        d, std = ARCH["width"], CrammingSimpleConfig(arch=dict(ARCH)).arch["init_std"]
        if block == "sas":
            qk = state["encoder.layers.1.attn.qk.weight"]
            assert torch.equal(qk[:d], torch.zeros(d, d)) and 0.5 * std < qk[d:].std() < 1.5 * std
            assert state["encoder.layers.1.beta_ff"].item() == pytest.approx(loaded.config.arch["beta_ff_init"])
        else:
            value = state["encoder.layers.0.attn.value.weight"]
            assert torch.allclose(value @ value.T, torch.eye(d), atol=1e-5)


def test_a_resized_vocabulary_gets_initialised_finite_rows(tmp_path):
    """resize_token_embeddings: with mean_resizing=False the new rows get the harness's init (transformers'
    default instead starts them at the old rows' mean); ignore_mismatched_sizes on a folder with a smaller
    vocabulary gives a whole new table with the harness's init."""
    model = tiny(CrammingSimpleForMaskedLM)
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(200, mean_resizing=False)
    table = model.get_input_embeddings().weight.detach()
    std = model.config.arch["init_std"]
    assert table.shape == (200, ARCH["width"]) and model.config.vocab_size == 200
    assert torch.equal(table[:128], old) and torch.isfinite(table).all()
    assert 0.5 * std < table[128:].std() < 1.5 * std
    assert model(input_ids=torch.tensor([[150, 199, 3]])).logits.shape == (1, 3, 200)  # the tied decoder follows
    model.save_pretrained(tmp_path / "small")
    grown = CrammingSimpleForMaskedLM.from_pretrained(tmp_path / "small", vocab_size=300, ignore_mismatched_sizes=True)
    table = grown.get_input_embeddings().weight.detach()
    assert table.shape[0] == 300 and torch.isfinite(table).all() and 0.5 * std < table.std() < 1.5 * std


@pytest.mark.parametrize("block", ("sas", "sasp", "parallel", "vskipinit"))
def test_disk_offloading_gives_the_in_memory_logits(block, tmp_path):
    """device_map="auto" with a memory cap small enough that blocks go to disk: accelerate's hooks load each
    module's weights for its forward, so a weight used outside its module's forward (a fused projection read
    as `.weight`, the tied decoder) would come out wrong or NaN."""
    model = tiny(CrammingSimpleForMaskedLM, block)
    model.save_pretrained(tmp_path / "model")
    x = ids()
    with torch.no_grad():
        expected = model(input_ids=x).logits
        offloaded = CrammingSimpleForMaskedLM.from_pretrained(
            tmp_path / "model", device_map="auto", max_memory={"cpu": 20_000}, offload_folder=str(tmp_path / "off")
        )
        assert "disk" in set(offloaded.hf_device_map.values()), offloaded.hf_device_map
        assert (offloaded(input_ids=x).logits - expected).abs().max() < 1e-5
    assert set(offloaded._no_split_modules) == {type(offloaded.encoder.layers[0]).__name__}


@pytest.mark.parametrize("block", BLOCK_NAMES)
def test_sdpa_and_eager_agree_and_eager_attentions_carry_their_gradient(block, tmp_path):
    """attn_implementation "sdpa" (the default) and "eager" give the same outputs on padded input; the attentions
    returned are the probabilities the forward used, so the loss has a gradient with respect to them."""
    tiny(CrammingSimpleForMaskedLM, block).save_pretrained(tmp_path)
    x, mask = ids(), torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    models = {
        impl: CrammingSimpleForMaskedLM.from_pretrained(tmp_path, attn_implementation=impl).eval()
        for impl in ("sdpa", "eager")
    }
    assert models["sdpa"].config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa, eager = (models[i](input_ids=x, attention_mask=mask).logits for i in ("sdpa", "eager"))
    assert (sdpa - eager).abs().max() < 1e-5
    out = models["sdpa"](input_ids=x, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == ARCH["depth"] and out.attentions[0].shape == (3, ARCH["heads"], 10, 10)
    for a in out.attentions:
        a.retain_grad()
    out.logits.float().pow(2).mean().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in out.attentions)
    assert torch.allclose(out.attentions[0][1, :, :, 6:], torch.zeros(()))  # padded keys get no attention


def test_an_attention_implementation_the_model_does_not_have_is_refused(tmp_path):
    tiny(CrammingSimpleModel).save_pretrained(tmp_path)
    with pytest.raises((ValueError, ImportError), match="(?i)flash"):
        CrammingSimpleModel.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


def test_peft_seq_cls_trains_the_classifier_head():
    """peft's SEQ_CLS task type saves and trains the module named `classifier` (or `score`): our head."""
    from peft import LoraConfig, get_peft_model

    model = tiny(CrammingSimpleForSequenceClassification, "sas", num_labels=3)
    adapted = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["qk", "up", "down"]))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert any(".classifier.modules_to_save." in n and n.endswith("out.weight") for n in trainable), trainable
    assert any(".classifier.modules_to_save." in n and n.endswith("dense.weight") for n in trainable)
    assert not any("lora_" not in n and "classifier" not in n for n in trainable)  # the encoder itself is frozen
    out = adapted(input_ids=ids(), labels=torch.tensor([0, 2, 1]))
    out.loss.backward()
    head = [p for n, p in adapted.named_parameters() if ".classifier.modules_to_save." in n]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)


def test_folders_with_the_old_head_names_load_in_transformers_and_in_the_harness(tmp_path):
    """Before the head was `classifier`, its weights were `dense.*` and `out.*`: such folders still load."""

    from cramming_simple.folders.io import load_model

    model = tiny(CrammingSimpleForSequenceClassification, "sasp", num_labels=2)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert {k.split(".")[0] for k in weights} == {"encoder", "classifier"}
    save_file({k.removeprefix("classifier."): v for k, v in weights.items()}, tmp_path / "model.safetensors")
    x = ids()
    with torch.no_grad():
        expected = model(input_ids=x).logits
        loaded = CrammingSimpleForSequenceClassification.from_pretrained(tmp_path).eval()
        assert torch.equal(loaded(input_ids=x).logits, expected)
        harness = load_model(tmp_path).eval()
        assert torch.equal(harness(x)[0], expected)


def test_every_heads_base_model_is_the_encoder_model(tmp_path):
    """base_model is a CrammingSimpleModel (a PreTrainedModel), and weights move between the classes by the
    `encoder` prefix, as BERT's do between BertModel and its heads."""
    mlm = tiny(CrammingSimpleForMaskedLM)
    clf = tiny(CrammingSimpleForSequenceClassification)
    assert all(type(m.base_model) is CrammingSimpleModel for m in (mlm, clf, tiny(CrammingSimpleModel)))
    mlm.save_pretrained(tmp_path / "mlm")
    base = CrammingSimpleModel.from_pretrained(tmp_path / "mlm")
    assert all(torch.equal(v, mlm.encoder.state_dict()[k]) for k, v in base.state_dict().items())
    base.save_pretrained(tmp_path / "base")
    again = CrammingSimpleForMaskedLM.from_pretrained(tmp_path / "base")
    assert all(torch.equal(v, mlm.state_dict()[k]) for k, v in again.state_dict().items())


@pytest.mark.parametrize("use_reentrant", (False, True))
def test_gradient_checkpointing_recomputes_every_block_and_gives_the_same_gradients(use_reentrant):
    """gradient_checkpointing_enable() on a head checkpoints every block of its encoder in training: each block
    runs again in the backward, and the gradients are those of the plain run."""
    model, x = tiny(CrammingSimpleForMaskedLM, "sas").train(), ids()
    calls = []
    for layer in model.encoder.layers:  # a module inside the block: the recompute runs the block's forward again
        layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1))

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert len(calls) == ARCH["depth"]
    model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
    calls.clear()
    checkpointed = grads()
    assert len(calls) == 2 * ARCH["depth"]  # each block once forward, once again in the backward
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
