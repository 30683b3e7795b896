"""Our models as Hugging Face transformers' AST (``ASTModel``, ``ASTForAudioClassification``)
and back. Needs the optional ``export`` extra (``pip install -e '.[export]'``).

AST is the same network as the SSAST encoder (a DeiT on 16x16 spectrogram patches with a
cls and a distillation token); only the parameter layout differs:

| ours (timm) | transformers 5 |
|---|---|
| ``cls_token``, ``dist_token`` | ``embeddings.cls_token``, ``distillation_token`` |
| ``pos_embed`` | ``embeddings.position_embeddings`` |
| ``patch_embed.proj`` | ``embeddings.patch_embeddings.projection`` |
| ``blocks.i.attn.qkv`` (rows q, k, v) | ``layers.i.attention.q_proj``, ``k_proj``, ``v_proj`` |
| ``blocks.i.attn.proj`` | ``layers.i.attention.o_proj`` |
| ``blocks.i.norm1``, ``norm2`` | ``layers.i.layernorm_before``, ``layernorm_after`` |
| ``blocks.i.mlp.fc1``, ``fc2`` | ``layers.i.mlp.fc1``, ``fc2`` |
| ``norm`` | ``layernorm`` |
| classifier ``head.0`` (LayerNorm), ``head.1`` | ``classifier.layernorm``, ``classifier.dense`` |

What AST's config cannot express is refused (:func:`why_not_hf`): a non-square patch (the
frame geometry, 128x2) and a single cls token (``base_nokd``). AST pools the mean of its
two cls tokens, which is our ``pooling=cls``; a ``pooling=mean`` classifier maps to
``ASTModel`` plus a separate head (:func:`head_state`). AST's head LayerNorm uses the
config's ``layer_norm_eps`` (1e-6, the encoder's) where ours uses PyTorch's 1e-5: logits
agree to ~1e-5 relative, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ssast.classifier import SSASTClassifier
from ssast.config import SIZES, SSASTConfig
from ssast.encoder import SpectrogramEncoder
from ssast.model import SSAST

LAYER_NORM_EPS = 1e-6
"""timm's LayerNorm eps in the encoder (transformers' default is 1e-12)."""


def why_not_hf(cfg: SSASTConfig) -> str | None:
    """Why AST's config cannot describe this model, or None when it can."""
    fs, ts = cfg.patch_shape
    if fs != ts:
        return (
            f"AST's config has one square patch_size; this model's patches are {fs}x{ts} "
            "(the frame geometry cannot be expressed in transformers' AST)"
        )
    if cfg.preset.num_extra_tokens != 2:
        return (
            f"AST always has a cls and a distillation token; size {cfg.size} has only a cls "
            "token (base_nokd cannot be expressed in transformers' AST)"
        )
    return None


def hf_config(cfg: SSASTConfig, class_names: Sequence[str] | None = None):
    """The ``transformers.ASTConfig`` of a model (with its labels for a classifier)."""
    from transformers import ASTConfig

    reason = why_not_hf(cfg)
    if reason:
        raise ValueError(f"cannot export to Hugging Face: {reason}")
    p = cfg.preset
    labels = {}
    if class_names:
        labels = {
            "id2label": dict(enumerate(class_names)),
            "label2id": {n: i for i, n in enumerate(class_names)},
        }
    return ASTConfig(
        hidden_size=p.embed_dim,
        num_hidden_layers=p.depth,
        num_attention_heads=p.num_heads,
        intermediate_size=4 * p.embed_dim,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=LAYER_NORM_EPS,
        qkv_bias=True,
        patch_size=cfg.patch_shape[0],
        frequency_stride=cfg.patch_stride[0],
        time_stride=cfg.patch_stride[1],
        max_length=cfg.input_tdim,
        num_mel_bins=cfg.input_fdim,
        **labels,
    )


def to_hf(model: SSAST | SSASTClassifier, class_names: Sequence[str] | None = None) -> nn.Module:
    """``ASTForAudioClassification`` of a ``pooling=cls`` classifier, ``ASTModel`` of an
    encoder (an :class:`SSAST`, or a ``pooling=mean`` classifier's encoder: its head is
    :func:`head_state`), in eval mode.

    Raises:
        ValueError: the model cannot be expressed (:func:`why_not_hf`), or it has a
            bottleneck adapter (LoRA is folded in on a copy).
    """
    from transformers import ASTForAudioClassification, ASTModel

    if isinstance(model, SSASTClassifier) and model.adapter.kind != "none":
        if model.adapter.kind != "lora":
            raise ValueError(
                f"cannot export a classifier with a {model.adapter.kind} adapter to "
                "Hugging Face (AST has no place for it; only LoRA folds into the weights)"
            )
        model = lora_merged(model)
    with_head = isinstance(model, SSASTClassifier) and model.pooling == "cls"
    if with_head and not class_names:
        class_names = [str(k) for k in range(model.num_classes)]
    config = hf_config(model.cfg, class_names if with_head else None)
    hf = ASTForAudioClassification(config) if with_head else ASTModel(config)
    body = hf.audio_spectrogram_transformer if with_head else hf
    with torch.no_grad():
        for ours, theirs in _pairs(model.encoder, body):
            theirs.copy_(ours)
        if with_head:
            hf.classifier.layernorm.weight.copy_(model.head[0].weight)
            hf.classifier.layernorm.bias.copy_(model.head[0].bias)
            hf.classifier.dense.weight.copy_(model.head[1].weight)
            hf.classifier.dense.bias.copy_(model.head[1].bias)
    return hf.eval()


def lora_merged(model: SSASTClassifier) -> SSASTClassifier:
    """A plain copy of a LoRA classifier with the adapter folded into the weights (the
    model itself keeps its adapter)."""
    copy = SSASTClassifier(model.cfg, model.num_classes, model.pooling, model.adapter)
    copy.load_state_dict(model.state_dict())
    copy.merge_lora()
    return copy.eval()


def head_state(model: SSASTClassifier) -> dict[str, torch.Tensor]:
    """The head of a classifier (LayerNorm eps 1e-5, then Linear) as plain tensors, for
    ``pooling=mean`` exports: logits = head(mean of ASTModel's patch tokens, i.e.
    ``last_hidden_state[:, 2:].mean(1)``)."""
    return {
        "layernorm.weight": model.head[0].weight.detach().clone(),
        "layernorm.bias": model.head[0].bias.detach().clone(),
        "dense.weight": model.head[1].weight.detach().clone(),
        "dense.bias": model.head[1].bias.detach().clone(),
    }


def from_hf(hf: nn.Module, num_masked: int = 1) -> SSAST | SSASTClassifier:
    """Our model from a transformers AST: a ``pooling=cls`` :class:`SSASTClassifier` of an
    ``ASTForAudioClassification``, an :class:`SSAST` (fresh pretext heads and mask
    embedding, ``num_masked`` masked patches) of an ``ASTModel``."""
    c = hf.config
    with_head = hasattr(hf, "classifier")
    body = hf.audio_spectrogram_transformer if with_head else hf
    size = next(
        (
            name
            for name, p in SIZES.items()
            if (p.embed_dim, p.depth, p.num_heads)
            == (c.hidden_size, c.num_hidden_layers, c.num_attention_heads)
            and p.num_extra_tokens == 2
        ),
        None,
    )
    if size is None or c.intermediate_size != 4 * c.hidden_size:
        raise ValueError(
            f"this AST (hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
            f"{c.num_attention_heads} heads, mlp {c.intermediate_size}) is not a DeiT size "
            "SSAST has (tiny, small, base)"
        )
    cfg = SSASTConfig(
        size=size,
        patch_shape=(c.patch_size, c.patch_size),
        patch_stride=(c.frequency_stride, c.time_stride),
        input_fdim=c.num_mel_bins,
        input_tdim=c.max_length,
        num_masked=num_masked,
    )
    if with_head:
        model: SSAST | SSASTClassifier = SSASTClassifier(cfg, c.num_labels, pooling="cls")
    else:
        model = SSAST(cfg)
    with torch.no_grad():
        for ours, theirs in _pairs(model.encoder, body):
            ours.copy_(theirs)
        if with_head:
            model.head[0].weight.copy_(hf.classifier.layernorm.weight)
            model.head[0].bias.copy_(hf.classifier.layernorm.bias)
            model.head[1].weight.copy_(hf.classifier.dense.weight)
            model.head[1].bias.copy_(hf.classifier.dense.bias)
    return model.eval()


def class_names_of(hf: nn.Module) -> list[str]:
    """The classes of an ``ASTForAudioClassification``, in logit order."""
    id2label: dict[Any, str] = hf.config.id2label
    return [id2label[k] for k in sorted(id2label, key=int)]


def _pairs(
    encoder: SpectrogramEncoder, body: nn.Module
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(our tensor, the matching AST tensor) of every encoder parameter."""
    emb = body.embeddings
    yield encoder.cls_token, emb.cls_token
    yield encoder.dist_token, emb.distillation_token
    if encoder.pos_embed.shape != emb.position_embeddings.shape:
        raise ValueError(
            f"position table {tuple(encoder.pos_embed.shape)} vs AST's "
            f"{tuple(emb.position_embeddings.shape)}: the configs disagree"
        )
    yield encoder.pos_embed, emb.position_embeddings
    yield encoder.patch_embed.proj.weight, emb.patch_embeddings.projection.weight
    yield encoder.patch_embed.proj.bias, emb.patch_embeddings.projection.bias
    D = encoder.embed_dim
    for block, layer in zip(encoder.blocks, body.layers, strict=True):
        att = layer.attention
        for k, proj in enumerate((att.q_proj, att.k_proj, att.v_proj)):
            yield block.attn.qkv.weight[k * D : (k + 1) * D], proj.weight
            yield block.attn.qkv.bias[k * D : (k + 1) * D], proj.bias
        for ours, theirs in (
            (block.attn.proj, att.o_proj),
            (block.norm1, layer.layernorm_before),
            (block.norm2, layer.layernorm_after),
            (block.mlp.fc1, layer.mlp.fc1),
            (block.mlp.fc2, layer.mlp.fc2),
        ):
            yield ours.weight, theirs.weight
            yield ours.bias, theirs.bias
    yield encoder.norm.weight, body.layernorm.weight
    yield encoder.norm.bias, body.layernorm.bias
