"""Masked spectrogram patch modelling (MSPM) losses, batched over clips.

Shapes: B batch, M masked patches per clip, P values per patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(targets: torch.Tensor, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminative loss: InfoNCE between the masked patches of each clip, and its accuracy.

    Scores are raw dot products S[b, a, k] = <target a, prediction k>, with negatives only
    the other masked patches of the same clip. As in the original code (the orientation
    that produced the released checkpoints, reference section 4.2), the log-softmax runs
    over predictions for each target (dim -1). Accuracy is the original's too: for each
    prediction k, is its own target the argmax over targets of that same row-normalised
    softmax (``argmax(softmax(S, dim=-1), dim=0)`` in the original code; the row
    normalisers make this differ from a plain argmax of S over targets).

    Args:
        targets: (B, M, P) patch values, no gradient needed.
        predictions: (B, M, P) discriminative-head outputs.

    Returns:
        (nce, acc): scalar mean loss over B*M terms and the fraction of correct matches.
    """
    scores = torch.bmm(targets, predictions.transpose(1, 2))  # (B, M_target, M_pred)
    log_prob = F.log_softmax(scores.float(), dim=-1)  # over predictions
    nce = -log_prob.diagonal(dim1=1, dim2=2).mean()
    own = torch.arange(scores.shape[1], device=scores.device)
    acc = (log_prob.argmax(dim=1) == own).float().mean()  # per prediction, over targets
    return nce, acc.detach()


def reconstruction_mse(targets: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """Generative loss: mean squared error over all B*M*P values (no per-patch norm)."""
    return F.mse_loss(predictions.float(), targets.float())


def gather_patches(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of x at per-clip indices: (B, L, K), (B, M) -> (B, M, K)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
