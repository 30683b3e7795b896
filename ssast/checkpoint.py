"""Checkpoints: the released SSAST layout and ours.

Key mapping between the original (``DataParallel`` state dict) and this package:

=================================  ==============================================
original key                       here
=================================  ==============================================
``module.v.<name>``                ``encoder.<name>`` (same names below ``v``)
``module.mask_embed``              ``mask_embed``
``module.cpredlayer.{0,2}.*``      ``cpredlayer.{0,2}.*``
``module.gpredlayer.{0,2}.*``      ``gpredlayer.{0,2}.*``
``module.p_input_fdim`` / ``_tdim``  ``SSASTConfig.input_fdim`` / ``input_tdim``
``module.v.head*``                 dropped (timm's unused 1000-way heads)
``module.mlp_head.{0,1}.*``        ``SSASTClassifier.head.{0,1}.*`` (fine-tuned files)
=================================  ==============================================

Patch shape comes from ``v.patch_embed.proj.weight`` (its last two dims), the model size
from the width of ``v.cls_token`` and whether ``v.dist_token`` exists. Every file is read
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from typing import IO, Any

import torch

from ssast.adapters import AdapterConfig
from ssast.classifier import SSASTClassifier
from ssast.config import SIZES, SSASTConfig
from ssast.model import SSAST
from ssast.original import PREFIX as _PREFIX

logger = logging.getLogger(__name__)

FORMAT = "ssast-ray"
FORMAT_VERSION = 1
_PRETEXT = re.compile(r"^(mask_embed|[cg]predlayer\.[02]\.(weight|bias))$")
_TIMM_HEAD = re.compile(r"^v\.head(_dist)?\.(weight|bias)$")

StateDict = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------- import
def load_original_checkpoint(
    path_or_state_dict: str | os.PathLike | StateDict,
    patch_stride: tuple[int, int] | None = None,
    input_tdim: int | None = None,
    input_fdim: int | None = None,
    num_masked: int = 400,
) -> SSAST:
    """Build an :class:`SSAST` from a released (or exported) original SSAST checkpoint.

    Size, patch shape and pretraining input size are read from the file. With
    ``patch_stride`` / ``input_tdim`` / ``input_fdim`` the model is adapted for fine-tuning
    exactly as the original does (new stride, positions cropped or resized).

    Raises:
        ValueError: not an SSAST pretrained file (fine-tuned, unknown keys, wrong shapes).
    """
    model = _from_original(_read(path_or_state_dict), _describe(path_or_state_dict), num_masked)
    if patch_stride is not None or input_tdim is not None or input_fdim is not None:
        model = model.adapted(
            patch_stride=patch_stride, input_tdim=input_tdim, input_fdim=input_fdim
        )
    return model


def _from_original(raw: Mapping[str, Any], where: str, num_masked: int = 400) -> SSAST:
    state = _strip_prefix(raw)
    if any(k.startswith("mlp_head.") for k in state):
        raise ValueError(
            f"{where} is a fine-tuned SSAST checkpoint (it has mlp_head.* and no "
            "p_input_fdim/p_input_tdim); expected a pretrained one such as "
            "SSAST-Base-Patch-400.pth. Build the model from its pretrained file, then load "
            "the fine-tuned weights with load_original_classifier."
        )
    cfg = _config_from_original(state, where, num_masked)
    mapped, unknown = {}, []
    for key, value in state.items():
        if key.startswith("v.") and not _TIMM_HEAD.match(key):
            mapped["encoder." + key[2:]] = value
        elif _PRETEXT.match(key):
            mapped[key] = value
        elif not (_TIMM_HEAD.match(key) or key in ("p_input_fdim", "p_input_tdim")):
            unknown.append(key)
    model = SSAST(cfg)
    expected = model.state_dict()
    unknown += [k.replace("encoder.", "v.", 1) for k in mapped if k not in expected]
    if unknown:
        raise ValueError(
            f"{where} has keys that are not part of an SSAST {cfg.size} checkpoint: "
            f"{sorted(unknown)[:8]}"
        )
    missing = sorted(set(expected) - set(mapped))
    missing_encoder = [k for k in missing if k.startswith("encoder.")]
    if missing_encoder:
        raise ValueError(f"{where} lacks encoder weights: {missing_encoder[:8]}")
    if missing:
        logger.warning(
            "%s has no pretext heads (%s); they keep their random init", where, ", ".join(missing)
        )
    model.load_state_dict(mapped, strict=False)
    return model


def _config_from_original(state: StateDict, where: str, num_masked: int) -> SSASTConfig:
    need = [
        "v.patch_embed.proj.weight",
        "v.cls_token",
        "v.pos_embed",
        "p_input_fdim",
        "p_input_tdim",
    ]
    absent = [k for k in need if k not in state]
    if absent:
        raise ValueError(
            f"{where} is not a pretrained SSAST checkpoint: missing {absent} (found "
            f"{len(state)} keys, e.g. {sorted(state)[:4]}). Expected the layout of the released "
            "SSAST-*-400.pth files, with or without the 'module.' prefix."
        )
    D = state["v.cls_token"].shape[-1]
    has_dist = "v.dist_token" in state
    size = next(
        (s for s, p in SIZES.items() if p.embed_dim == D and (p.num_extra_tokens == 2) == has_dist),
        None,
    )
    if size is None:
        raise ValueError(f"{where}: token width {D} matches no SSAST size (192, 384, 768)")
    patch_shape = tuple(state["v.patch_embed.proj.weight"].shape[2:])
    fdim, tdim = int(state["p_input_fdim"]), int(state["p_input_tdim"])
    cfg = SSASTConfig(
        size=size,
        patch_shape=patch_shape,
        patch_stride=patch_shape,
        input_fdim=fdim,
        input_tdim=tdim,
        num_masked=1,
    )
    return cfg.replace(num_masked=min(num_masked, cfg.num_patches))


def load_original_classifier(
    pretrained: str | os.PathLike | StateDict,
    finetuned: str | os.PathLike | StateDict,
    patch_stride: tuple[int, int],
    input_tdim: int,
    pooling: str = "mean",
) -> SSASTClassifier:
    """An original fine-tuned checkpoint: geometry from its pretrained file, weights on top."""
    base = load_original_checkpoint(pretrained, patch_stride=patch_stride, input_tdim=input_tdim)
    state = _strip_prefix(_read(finetuned))
    if "mlp_head.1.weight" not in state:
        raise ValueError(f"{_describe(finetuned)} has no mlp_head.*: not a fine-tuned file")
    clf = SSASTClassifier(base.cfg, state["mlp_head.1.weight"].shape[0], pooling)
    enc = {k[2:]: v for k, v in state.items() if k.startswith("v.") and not _TIMM_HEAD.match(k)}
    head = {k[len("mlp_head.") :]: v for k, v in state.items() if k.startswith("mlp_head.")}
    _load_strict(clf.encoder, enc, _describe(finetuned))
    _load_strict(clf.head, head, _describe(finetuned))
    return clf


# ------------------------------------------------------------------ our format
def save_checkpoint(
    model: SSAST | SSASTClassifier, path: str | os.PathLike, extra: Mapping[str, Any] | None = None
) -> None:
    """Write our checkpoint: weights plus the config needed to rebuild the model."""
    torch.save(checkpoint_payload(model, extra), path)


def checkpoint_payload(
    model: SSAST | SSASTClassifier, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The dict :func:`save_checkpoint` writes (for callers that add optimizer state)."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": "classifier" if isinstance(model, SSASTClassifier) else "pretrain",
        "config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if isinstance(model, SSASTClassifier):
        payload.update(num_classes=model.num_classes, pooling=model.pooling)
        if model.adapter.kind != "none":  # absent means none: plain payloads stay as before
            payload["adapter"] = model.adapter.to_dict()
    payload.update(extra or {})
    return payload


def load_checkpoint(
    path_or_payload: str | os.PathLike | Mapping[str, Any],
) -> SSAST | SSASTClassifier:
    """Load our checkpoint, or a released original pretrained ``.pth`` (detected by layout)."""
    payload = _read(path_or_payload)
    if payload.get("format") != FORMAT:
        return _from_original(payload, _describe(path_or_payload))
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{_describe(path_or_payload)} is checkpoint format version {payload.get('version')}"
            f", this code reads version {FORMAT_VERSION}"
        )
    cfg = SSASTConfig.from_dict(payload["config"])
    if payload["kind"] == "classifier":
        adapter = AdapterConfig.from_dict(payload.get("adapter", {}))
        model: SSAST | SSASTClassifier = SSASTClassifier(
            cfg, payload["num_classes"], payload["pooling"], adapter
        )
    else:
        model = SSAST(cfg)
    _load_strict(model, payload["state_dict"], _describe(path_or_payload))
    return model


# --------------------------------------------------------------------- helpers
def _read(source) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    return read_checkpoint(source)


def read_checkpoint(source: str | os.PathLike | IO[bytes], name: str | None = None) -> dict:
    """The dict a checkpoint file holds, read with ``torch.load(weights_only=True)``.

    ``source`` is a path or an open binary file (``name`` names it in messages).

    Raises:
        ValueError: naming the file and what it found: missing, not a regular file, empty,
            truncated or not a torch file, pickled objects that need code to run (refused:
            only tensors and plain Python values are read), or something other than a dict.
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        if not os.path.exists(source):
            raise ValueError(f"checkpoint {name} does not exist")
        if not os.path.isfile(source):
            raise ValueError(f"checkpoint {name} is not a regular file")
        if os.path.getsize(source) == 0:
            raise ValueError(f"checkpoint {name} is empty (0 bytes): not a checkpoint")
    elif not hasattr(source, "read"):
        raise TypeError(f"a checkpoint is a path or a binary file, got {type(source).__name__}")
    name = name or getattr(source, "name", None) or "checkpoint"
    if not isinstance(source, (str, os.PathLike)) and source.seekable():
        here = source.tell()
        if source.seek(0, os.SEEK_END) == here:
            raise ValueError(f"checkpoint {name} is empty (0 bytes): not a checkpoint")
        source.seek(here)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False: never pass that on.
        raise ValueError(
            f"checkpoint {name} refused: it holds pickled objects that need code to run to "
            f"load ({_pickle_reason(exc)}); only tensors and plain Python values are read. "
            "Re-save the model's state dict (torch.save(model.state_dict(), path)) where "
            "its source is trusted"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        first = re.split(r"(?<=\.)\s|\n", str(exc).strip(), maxsplit=1)[0][:160]
        raise ValueError(
            f"checkpoint {name} is truncated or not a torch checkpoint "
            f"({type(exc).__name__}: {first or 'no data'})"
        ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {name} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


def _pickle_reason(exc: Exception) -> str:
    """The offending global from torch's weights-only message, without its advice."""
    found = re.search(r"(GLOBAL [\w.]+|operand \d+)", str(exc))
    return found.group(1) if found else "an object outside the weights-only allow-list"


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k[len(_PREFIX) :] if k.startswith(_PREFIX) else k: v for k, v in state.items()}


def _describe(source) -> str:
    return "state dict" if isinstance(source, Mapping) else f"checkpoint {os.fspath(source)}"


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if problems:
        raise ValueError(f"{where} does not fit the model: " + "; ".join(problems[:8]))
    torch.nn.Module.load_state_dict(module, state)
