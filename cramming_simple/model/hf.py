"""The model as Hugging Face `transformers` classes: a config and three heads (hidden states, masked LM,
sequence classification) around the harness's own `Encoder`, `MaskedLM` and `SequenceClassifier`.

There is one implementation of the model. These classes hold the harness modules under the same attribute
names (so a saved folder's weight names fit both), and call the harness's forward code. Saved folders carry
this file's text, with the model package it uses, as one self-contained `modeling_cramming_simple.py`
(`folders.remote`): a machine without cramming-simple loads them with `trust_remote_code=True`. Where
cramming-simple is installed the classes are registered with the Auto classes (`cramming_simple.autoregister`)
and no remote code is needed.

This module imports `transformers` and the generated file needs only `torch` and `transformers`, so imports
from the rest of the package stay relative (folders.remote drops them when it joins the sources).
"""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # transformers before 4.52: encode checkpoints the blocks itself
    GradientCheckpointingLayer = None

from .bert import IGNORE, LEGACY_HEAD, ClassificationHead, Encoder, MaskedLM
from .config import MODEL_TYPE, ArchConfig
from .layers import KeyMask


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
    base_model_prefix = "encoder"  # every head keeps its CrammingSimpleModel here: weight names encoder.*
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # per block (encode); gradient_checkpointing_enable() turns it on
    _supports_sdpa = True  # the attention modules run SDPA; "eager" builds the matrices (encode)
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
        itself) also the self-contained modeling file that the folder's auto_map names (folders.remote)."""
        own = type(self).__module__.startswith("cramming_simple.")
        if own:
            remote = importlib.import_module("cramming_simple.folders.remote")  # not in the generated file
            self.config.auto_map = remote.auto_map()
        super().save_pretrained(save_directory, *args, **kwargs)
        if own and not remote.write_modeling_file(self.base_model.spec, save_directory):
            config = Path(save_directory) / "config.json"
            config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "auto_map"}))

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.embedding.tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.embedding.tokens = value


def embed(
    model: CrammingSimpleModel,
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
    return model.embedding(input_ids, inputs_embeds)


@functools.cache
def checkpointing_class(block: type) -> type:
    """The block class as a transformers GradientCheckpointingLayer as well: the layer that
    gradient_checkpointing_enable() switches, that checkpoints its own forward in training, and that
    transformers' tests and tools look for. A subclass made here, because the harness's blocks (model.blocks,
    a user's block) are plain torch modules that pretraining uses without transformers; it keeps the block's
    name, forward and weights."""
    return type(block.__name__, (GradientCheckpointingLayer, block), {"__module__": block.__module__})


def checkpointing(layers: nn.ModuleList) -> nn.ModuleList:
    """Every block in `layers` as its checkpointing_class (a no-op before transformers 4.52)."""
    if GradientCheckpointingLayer is not None:
        for layer in layers:
            if not isinstance(layer, GradientCheckpointingLayer):
                layer.__class__ = checkpointing_class(type(layer))
    return layers


def block_classes(encoder: nn.Module) -> list[str]:
    """`_no_split_modules`: the block classes, which device maps (accelerate, device_map="auto") keep whole on
    one device, with the residual stream they read and write."""
    return sorted({type(layer).__name__ for layer in encoder.layers})


def encode(
    model: CrammingSimpleModel,
    x: Tensor,
    attention_mask: Tensor | None,
    output_hidden_states: bool | None,
    output_attentions: bool | None,
) -> BaseModelOutput:
    """The harness's Encoder on the embedded input x (B, T, d), run layer by layer as BERT's classes are: hidden
    states after the embedding and after every block (before the final LayerNorm, which only
    `last_hidden_state` has), the attention probabilities softmax(q k^T / sqrt(d_k)) of every block's attention
    (B, H, T, T) where the block has one (a shaped block's A_h, before its identity and centring terms), and
    gradient checkpointing per block.

    Attention runs through SDPA (`attn_implementation="sdpa"`, the default) unless the config asks for "eager"
    or the attentions are wanted: then every attention module builds its probabilities as a matrix and uses
    that very tensor, which is what is returned (with its gradient, for attribution)."""
    config = model.config
    hidden_wanted = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    attentions_wanted = config.output_attentions if output_attentions is None else output_attentions
    mask = KeyMask.from_attention_mask(attention_mask, x.dtype)
    hidden = [x] if hidden_wanted else None
    attentions: list[Tensor] = []
    modules = [m for m in model.layers.modules() if hasattr(m, "probe")]  # every attention sub-block (model.layers)
    eager = bool(attentions_wanted) or getattr(config, "_attn_implementation", None) == "eager"
    for module in modules:  # set at every call, not restored: a checkpointed block recomputes as it ran
        module.eager = eager
        if attentions_wanted:  # the first per block and call
            module.probe = lambda q, k, m, x_in, out, probs: attentions.append(probs)
    try:
        for layer in model.layers:  # a GradientCheckpointingLayer checkpoints itself where enabled (checkpointing)
            if GradientCheckpointingLayer is None and model.gradient_checkpointing and model.training:
                x = model._gradient_checkpointing_func(layer.__call__, x, mask)
            else:
                x = layer(x, mask)
            if hidden is not None:
                hidden.append(x)
    finally:
        for module in modules:
            module.probe = None
    return BaseModelOutput(
        last_hidden_state=model.final_norm(x),
        hidden_states=tuple(hidden) if hidden is not None else None,
        attentions=tuple(attentions) if attentions_wanted and attentions else None,
    )


def as_requested(model: CrammingSimplePreTrainedModel, output, return_dict: bool | None):
    """A ModelOutput, or with return_dict=False (or config.return_dict False) its tuple, as BERT's classes do."""
    wanted = model.config.return_dict if return_dict is None else return_dict
    return output if wanted else output.to_tuple()


class CrammingSimpleModel(CrammingSimplePreTrainedModel):
    """The encoder, and every head's `base_model`: last_hidden_state (B, T, d), after the final LayerNorm.

    It holds the harness Encoder's modules under the Encoder's names (`embedding`, `layers`, `final_norm`), so
    its weights are the Encoder's state dict, and `encoder.*` in the heads that hold it as `encoder`."""

    def __init__(self, config: CrammingSimpleConfig):
        super().__init__(config)
        encoder = Encoder(config.arch_config(), config.block)
        self.cfg, self.block, self.spec = encoder.cfg, encoder.block, encoder.spec
        self.embedding, self.final_norm = encoder.embedding, encoder.final_norm
        self.layers = checkpointing(encoder.layers)
        self._no_split_modules = block_classes(self)
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
        self.encoder = CrammingSimpleModel(config)
        self._no_split_modules = self.encoder._no_split_modules
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
        encoded = self.encoder(
            input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions, output_hidden_states, True
        )
        logits = MaskedLM.decode(self, encoded.last_hidden_state)  # the harness's code on the same `encoder`
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        out = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=encoded.hidden_states, attentions=encoded.attentions
        )
        return as_requested(self, out, return_dict)


class CrammingSimpleForSequenceClassification(CrammingSimplePreTrainedModel):
    """The GLUE model (SequenceClassifier): the encoder and its `classifier` head (ClassificationHead, the name
    peft's SEQ_CLS trains); num_labels=1 is regression (MSE). Folders from before the head had that name
    (`dense.*`, `out.*`) load through from_pretrained's key mapping (model.bert.LEGACY_HEAD)."""

    def __init__(self, config: CrammingSimpleConfig):
        if config.num_labels == 1:  # the harness's rule (MSE); tells the text-classification pipeline not to squash
            config.problem_type = "regression"
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = CrammingSimpleModel(config)
        self.classifier = ClassificationHead(config.arch_config(), config.num_labels, config.head_width)
        self._no_split_modules = self.encoder._no_split_modules
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' from_pretrained, reading the head's old weight names too (unless given a key_mapping)."""
        kwargs.setdefault("key_mapping", {f"^{old}".replace(".", r"\."): new for old, new in LEGACY_HEAD.items()})
        return super().from_pretrained(*args, **kwargs)

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
        encoded = self.encoder(
            input_ids, attention_mask, token_type_ids, inputs_embeds, output_attentions, output_hidden_states, True
        )
        logits = self.classifier(encoded.last_hidden_state)
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
