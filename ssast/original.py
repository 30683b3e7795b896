"""Export to the released SSAST checkpoint layout (``DataParallel`` keys, ``module.v.*``).

The key mapping is documented in :mod:`ssast.checkpoint`, which reads this layout back.
This module imports no model class (only for type hints), so the model can offer
``SSAST.to_original_state_dict`` without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ssast.classifier import SSASTClassifier
    from ssast.model import SSAST

PREFIX = "module."
"""The released files were saved from ``torch.nn.DataParallel``."""
TIMM_HEAD_CLASSES = 1000
"""Width of timm's unused ImageNet heads, which the released files contain."""


def to_original_state_dict(model: SSAST, include_timm_heads: bool = True) -> dict[str, Any]:
    """A pretraining model's weights in the released checkpoints' layout.

    The result loads into the original ``ASTModel`` wrapped in ``DataParallel`` (and its
    fine-tuning constructor reads it as a pretrained file). The unused timm heads are
    written as zeros when ``include_timm_heads`` so the key set matches a freshly saved
    original model.
    """
    cfg = model.cfg
    if not cfg.is_pretraining_geometry:
        raise ValueError(
            "the original pretrained layout needs the pretraining geometry (patch_stride == "
            f"patch_shape), this model has stride {cfg.patch_stride}; export the model before "
            "adapting it, or save a fine-tuned SSASTClassifier with classifier_to_original_"
            "state_dict"
        )
    ours = model.state_dict()
    out: dict[str, Any] = {
        "p_input_fdim": torch.tensor(cfg.input_fdim, dtype=torch.int64),
        "p_input_tdim": torch.tensor(cfg.input_tdim, dtype=torch.int64),
        "mask_embed": ours["mask_embed"],
    }
    out.update(_encoder_to_original(model, include_timm_heads))
    out.update({k: v for k, v in ours.items() if k.startswith(("cpredlayer.", "gpredlayer."))})
    return {PREFIX + k: v.detach().clone() for k, v in out.items()}


def classifier_to_original_state_dict(model: SSASTClassifier) -> dict[str, torch.Tensor]:
    """A fine-tuned classifier in the original fine-tuning layout (``mlp_head``).

    Raises:
        ValueError: the classifier has adapters (the original has no place for them; fold
            LoRA in first with ``model.merge_lora()``; a bottleneck cannot be folded).
    """
    if model.adapter.kind != "none":
        raise ValueError(
            f"a classifier with a {model.adapter.kind} adapter has no original layout"
            + ("; call model.merge_lora() first" if model.adapter.kind == "lora" else "")
        )
    out = _encoder_to_original(model, include_timm_heads=True)
    out.update({"mlp_head." + k: v for k, v in model.head.state_dict().items()})
    return {PREFIX + k: v.detach().clone() for k, v in out.items()}


def _encoder_to_original(model, include_timm_heads: bool) -> dict[str, torch.Tensor]:
    enc = model.encoder.state_dict()
    # The original's emission order: v's own parameters, then its children.
    first = ["cls_token", "pos_embed"] + (["dist_token"] if "dist_token" in enc else [])
    out = {"v." + k: enc[k] for k in first}
    out.update({"v." + k: v for k, v in enc.items() if k not in first})
    if include_timm_heads:
        D = model.cfg.preset.embed_dim
        heads = ["head"] + (["head_dist"] if "dist_token" in enc else [])
        for h in heads:
            out[f"v.{h}.weight"] = torch.zeros(TIMM_HEAD_CLASSES, D)
            out[f"v.{h}.bias"] = torch.zeros(TIMM_HEAD_CLASSES)
    return out
