"""The model as Hugging Face `transformers` classes: a config and three heads (hidden states, masked LM,
sequence classification) around the harness's own `Encoder`, `MaskedLM` and `SequenceClassifier`.

There is one implementation of the model. These classes hold the harness modules under the same attribute
names (so a saved folder's weight names fit both), and call the harness's forward code. Saved folders carry
this file's text, with the model package it uses, as one self-contained `modeling_cramming_simple.py`
(`model.remote`): a machine without cramming-simple loads them with `trust_remote_code=True`. Where
cramming-simple is installed the classes are registered with the Auto classes (`cramming_simple.autoregister`)
and no remote code is needed.

This module imports `transformers` and the generated file needs only `torch` and `transformers`, so imports
from the rest of the package stay relative (model.remote drops them when it joins the sources).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from .bert import IGNORE, Encoder, MaskedLM, SequenceClassifier
from .config import MODEL_TYPE, ArchConfig
from .layers import KeyMask, attention_matrix


class ArchField:
    """A config attribute that reads and writes one field of the config's `arch` dict."""

    def __init__(self, field: str):
        self.field = field

    def __get__(self, config, owner=None):
        return self if config is None else config.arch[self.field]

    def __set__(self, config, value) -> None:
        config.arch[self.field] = value


class CrammingSimpleConfig(PretrainedConfig):
    """A saved folder's config.json: the harness's keys (`block`, `arch`, where a user's block came from) plus
    what `transformers` reads (`model_type`, `num_labels`, `id2label`, `problem_type`)."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        block: str = "preln",
        arch: dict | None = None,
        block_title: str | None = None,
        block_source: dict | None = None,
        head_width: int | None = None,
        **kwargs,
    ):
        self.block, self.block_title, self.block_source = block, block_title, block_source
        self.arch = asdict(ArchConfig.from_dict(arch or {}))
        self.head_width = head_width
        kwargs.setdefault("pad_token_id", self.arch["pad_token_id"])  # the tokenizer's pad id
        super().__init__(**kwargs)

    def arch_config(self) -> ArchConfig:
        return ArchConfig.from_dict(self.arch)

    # The names other libraries read from a BERT-like config, kept in `arch` (resize_token_embeddings writes one).
    vocab_size = ArchField("vocab_size")
    hidden_size = ArchField("width")
    num_hidden_layers = ArchField("depth")
    num_attention_heads = ArchField("heads")
    max_position_embeddings = ArchField("seq_len")


class CrammingSimplePreTrainedModel(PreTrainedModel):
    config_class = CrammingSimpleConfig
    base_model_prefix = "encoder"  # every class keeps the Encoder here: weight names encoder.* in all of them
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # per block (encode); gradient_checkpointing_enable() turns it on
    gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """The harness's init for whatever a load leaves without values: the unsaved position table, a weight
        the folder lacks, a new classification head, a resized vocabulary's new rows. transformers calls this
        per module; tensors that it marks as loaded (`_is_hf_initialized`) keep their values.

        A harness module sets its own parameters with `harness_init()`, exactly as its constructor does (model
        .layers); a token table or Linear that transformers made itself (resize_token_embeddings) gets the
        harness's normal(init_std); anything else (LayerNorm, a user's module) its `reset_parameters()`."""
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if module is self or all(getattr(t, "_is_hf_initialized", False) for t in own):
            return
        kept = [(t, t.detach().clone()) for t in own if getattr(t, "_is_hf_initialized", False)]
        std = self.config.arch["init_std"]
        if hasattr(module, "harness_init"):
            module.harness_init()
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        with torch.no_grad():
            for tensor, value in kept:
                tensor.copy_(value)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """transformers' save, and with the package's own classes (not remote code, which transformers copies
        itself) also the self-contained modeling file that the folder's auto_map names (model.remote)."""
        own = type(self).__module__.startswith("cramming_simple.")
        if own:
            remote = importlib.import_module("cramming_simple.folders.remote")  # not in the generated file
            self.config.auto_map = remote.auto_map()
        super().save_pretrained(save_directory, *args, **kwargs)
        if own and not remote.write_modeling_file(self.encoder.spec, save_directory):
            config = Path(save_directory) / "config.json"
            config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "auto_map"}))

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.embedding.tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.embedding.tokens = value


def embed(
    model: CrammingSimplePreTrainedModel,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    token_type_ids: Tensor | None,
) -> Tensor:
    """The block stack's input (B, T, d) from token ids or from token vectors (`inputs_embeds`: prompt tuning,
    attribution). token_type_ids are accepted as BERT's classes take them, but only as zeros: the model has no
    segment embeddings (crammed BERT drops them), so a second segment's ones would be ignored silently."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give input_ids or inputs_embeds (one of them)")
    if token_type_ids is not None and bool(token_type_ids.ne(0).any()):
        raise ValueError(
            "token_type_ids holds non-zero values, but this model has no segment embeddings (by design, as crammed "
            "BERT): a pair is one sequence [CLS] a [SEP] b [SEP]; tokenize with return_token_type_ids=False or drop "
            "the column"
        )
    return model.encoder.embedding(input_ids, inputs_embeds)


def block_classes(encoder: Encoder) -> list[str]:
    """`_no_split_modules`: the block classes, which device maps (accelerate, device_map="auto") keep whole on
    one device, with the residual stream they read and write."""
    return sorted({type(layer).__name__ for layer in encoder.layers})


def encode(
    model: CrammingSimplePreTrainedModel,
    x: Tensor,
    attention_mask: Tensor | None,
    output_hidden_states: bool | None,
    output_attentions: bool | None,
) -> BaseModelOutput:
    """The harness's Encoder on the embedded input x (B, T, d), run layer by layer as BERT's classes are: hidden
    states after the embedding and after every block (before the final LayerNorm, which only
    `last_hidden_state` has), the attention probabilities softmax(q k^T / sqrt(d_k)) of every block's attention
    (B, H, T, T) where the block has one (a shaped block's A_h, before its identity and centring terms), and
    gradient checkpointing per block."""
    config, encoder = model.config, model.encoder
    hidden_wanted = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    attentions_wanted = config.output_attentions if output_attentions is None else output_attentions
    mask = KeyMask.from_attention_mask(attention_mask, x.dtype)
    hidden = [x] if hidden_wanted else None
    attentions: list[Tensor] = []
    probes = [m for m in encoder.modules() if hasattr(m, "probe")] if attentions_wanted else []
    for module in probes:  # every attention sub-block reports its q and k (model.layers); the first per call
        module.probe = lambda q, k, m, x_in, out: attentions.append(attention_matrix(q, k, m))
    try:
        for layer in encoder.layers:
            if model.gradient_checkpointing and model.training:
                x = model._gradient_checkpointing_func(layer.__call__, x, mask)
            else:
                x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
    finally:
        for module in probes:
            module.probe = None
    return BaseModelOutput(
        last_hidden_state=encoder.final_norm(x),
        hidden_states=tuple(hidden) if hidden is not None else None,
        attentions=tuple(attentions) if attentions_wanted and attentions else None,
    )


def as_requested(model: CrammingSimplePreTrainedModel, output, return_dict: bool | None):
    """A ModelOutput, or with return_dict=False (or config.return_dict False) its tuple, as BERT's classes do."""
    wanted = model.config.return_dict if return_dict is None else return_dict
    return output if wanted else output.to_tuple()


class CrammingSimpleModel(CrammingSimplePreTrainedModel):
    """The encoder: last_hidden_state (B, T, d), after the final LayerNorm."""

    def __init__(self, config: CrammingSimpleConfig):
        super().__init__(config)
        self.encoder = Encoder(config.arch_config(), config.block)
        self._no_split_modules = block_classes(self.encoder)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        # No **kwargs: a misspelt keyword is a TypeError, and Trainer does not take the model for one that scales
        # its loss by num_items_in_batch (it would then skip its own 1/accumulation scaling).
        x = embed(self, input_ids, inputs_embeds, token_type_ids)
        out = encode(self, x, attention_mask, output_hidden_states, output_attentions)
        return as_requested(self, out, return_dict)


class CrammingSimpleForMaskedLM(CrammingSimplePreTrainedModel):
    """Full-vocabulary logits (B, T, V) through the tied decoder (MaskedLM.decode); `labels` (B, T) with -100
    where no loss is taken give the mean cross-entropy."""

    def __init__(self, config: CrammingSimpleConfig):
        super().__init__(config)
        self.encoder = Encoder(config.arch_config(), config.block)
        self._no_split_modules = block_classes(self.encoder)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MaskedLMOutput:
        x = embed(self, input_ids, inputs_embeds, token_type_ids)
        encoded = encode(self, x, attention_mask, output_hidden_states, output_attentions)
        logits = MaskedLM.decode(self, encoded.last_hidden_state)  # the harness's code on the same `encoder`
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        out = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        return as_requested(self, out, return_dict)


class CrammingSimpleForSequenceClassification(CrammingSimplePreTrainedModel):
    """The GLUE head (SequenceClassifier): num_labels=1 is regression (MSE)."""

    def __init__(self, config: CrammingSimpleConfig):
        if config.num_labels == 1:  # the harness's rule (MSE); tells the text-classification pipeline not to squash
            config.problem_type = "regression"
        super().__init__(config)
        model = SequenceClassifier(config.arch_config(), config.block, config.num_labels, config.head_width)
        self.num_labels = model.num_labels
        self.encoder, self.dense, self.dropout, self.out = model.encoder, model.dense, model.dropout, model.out
        self._no_split_modules = block_classes(self.encoder)
        self.post_init()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput:
        x = embed(self, input_ids, inputs_embeds, token_type_ids)
        encoded = encode(self, x, attention_mask, output_hidden_states, output_attentions)
        logits = SequenceClassifier.head(self, encoded.last_hidden_state)  # the harness's head, same attributes
        out = SequenceClassifierOutput(
            loss=classification_loss(self.config.problem_type, self.num_labels, logits, labels),
            logits=logits,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )
        return as_requested(self, out, return_dict)


def classification_loss(problem_type: str | None, num_labels: int, logits: Tensor, labels: Tensor | None):
    """The loss transformers' classifiers take: `problem_type`, or inferred as they infer it (one label:
    regression, MSE; integer labels: single-label, cross-entropy; else multi-label, BCE with logits). The first
    two are the harness's GLUE losses (SequenceClassifier.loss)."""
    if labels is None:
        return None
    if problem_type is None:
        integer = labels.dtype in (torch.long, torch.int)
        problem_type = "regression" if num_labels == 1 else "single_label_classification" if integer else "multi_label"
    if problem_type == "regression":
        return F.mse_loss((logits.squeeze(-1) if num_labels == 1 else logits).float(), labels.float())
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.float().view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


AUTO_CLASSES = {
    "AutoModel": CrammingSimpleModel,
    "AutoModelForMaskedLM": CrammingSimpleForMaskedLM,
    "AutoModelForSequenceClassification": CrammingSimpleForSequenceClassification,
}


def register() -> None:
    """Make the Auto classes and pipelines know the model type without remote code."""
    import transformers

    transformers.AutoConfig.register(MODEL_TYPE, CrammingSimpleConfig, exist_ok=True)
    for auto, cls in AUTO_CLASSES.items():
        getattr(transformers, auto).register(CrammingSimpleConfig, cls, exist_ok=True)
