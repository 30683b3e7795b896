"""Figures for MLflow: a clip, its mask and the generative reconstruction."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ssast import SSAST  # noqa: E402
from ssast.masking import mask_to_bool  # noqa: E402
from ssast.patching import patchify  # noqa: E402


def _unpatchify(patches: torch.Tensor, cfg) -> torch.Tensor:
    """(1, N, P) non-overlapping patches -> (F, T) image."""
    image = F.fold(
        patches.transpose(1, 2),
        (cfg.input_fdim, cfg.input_tdim),
        cfg.patch_shape,
        stride=cfg.patch_stride,
    )
    return image[0, 0]


@torch.no_grad()
def mask_figure(model: SSAST, x: torch.Tensor, gen: torch.Generator):
    """Three panels for one clip x (1, T, F): input, masked input, reconstruction."""
    was_training = model.training
    model.eval()
    cfg = model.cfg
    mask = model.sample_mask(1, generator=gen, device=x.device)
    patches = patchify(x, cfg.patch_shape, cfg.patch_stride)  # (1, N, P)
    dense = mask_to_bool(mask, cfg.num_patches)[..., None]  # (1, N, 1)
    masked = torch.where(dense, torch.full_like(patches, float(patches.min())), patches)
    filled = patches.clone()
    filled[dense.expand_as(patches)] = model.reconstruct(x, mask).float().reshape(-1)
    model.train(was_training)
    fig, axes = plt.subplots(3, 1, figsize=(10, 6), sharex=True)
    for ax, img, title in zip(
        axes,
        (patches, masked, filled),
        ("input (normalised log-mel)", "masked patches", "generative reconstruction"),
        strict=True,
    ):
        ax.imshow(_unpatchify(img.float().cpu(), cfg), origin="lower", aspect="auto")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    plt.close(fig)
    return fig


def confusion_figure(matrix, class_names: list[str]):
    """A (K, K) confusion matrix (rows true, columns predicted) with counts."""
    K = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * K, 0.8 + 0.6 * K))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(K), class_names, rotation=60, ha="right")
    ax.set_yticks(range(K), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(K):
        for j in range(K):
            ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    return fig
