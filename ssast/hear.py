"""The HEAR 2021 benchmark API (https://hearbenchmark.com/hear-api.html) for our encoders.

Shapes: n sounds, L samples, m frames, F mel bins, T window frames, W windows, (f, t) the
patch grid of one window, G patch columns of the whole clip, K timestamps, D width.

    from ssast import hear
    model = hear.load_model("runs/pretrain/final/ssast.pt")  # or model.pt, a released .pth
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # (n, K, D), (n, K) ms
    scene = hear.get_scene_embeddings(audio, model)  # (n, D)

Validate with ``hear-validator ssast.hear -m CHECKPOINT`` (package ``hearvalidator``, which
also installs tensorflow; tests/model/test_hear.py applies the same checks without it).

How a clip becomes embeddings:

- **Features** exactly as the pipeline computes them for the model: the model's own
  :class:`~pipeline.features.FeatureConfig` (checkpoint key ``features``; a released
  ``.pth`` implies ``FeatureConfig()``), :func:`~pipeline.features.prepare_waveform`
  (DC removal), :class:`~pipeline.features.FbankExtractor` rounded to float16 as the
  pipeline stores it, and ``(x - mean) / (2 std)`` with the model's statistics
  (``normalization``; the AudioSet preset for a released ``.pth``). ``segment_s`` is not
  applied: long clips are windowed instead.
- **Windows** of the model's input length T = ``input_tdim`` frames with a hop of half a
  window (a multiple of the patch time stride, so the patch columns of overlapping windows
  coincide). The fbank is padded at the end, in the raw log-mel domain as the pipeline
  pads (a normalised raw zero), to whole windows; a clip shorter than one window (even
  0.1 s) is one padded window, as the pipeline gives it to the model.
- **Column embeddings**: the patch tokens of a window averaged over frequency, one D vector
  per time column of patches (16 frames = 160 ms for the patch model, 20 ms for the frame
  model), then averaged over the windows that contain the column.
- **Timestamp embeddings** every :data:`TIMESTAMP_HOP_MS` (40 ms, finer than HEAR's 50 ms
  onset tolerance) from 0 to the clip's duration, both included: the column embeddings
  linearly interpolated at the timestamp between column centres (a column's centre is the
  middle of the samples its frames cover); timestamps before the first centre or after
  the last column with audio take that column.
- **Scene embedding**: the mean of all patch tokens of each window (what the pipeline's
  embeddings and the mean-pooled classifier compute for a clip that fits one window), then
  the mean over windows weighted by each window's real, unpadded frames.

A fine-tuned classifier contributes its encoder (its head and pooling are not used).
``load_model("")`` gives a randomly initialised tiny patch model with 1.28 s windows
(:data:`DEFAULT_CONFIG`, seed 0) for tests and for the API validator.

``ssast.hear`` is the one ``ssast`` module that imports ``pipeline`` (``pipeline.features``
and ``pipeline.normalization``, pure torch/numpy): featurizing as in training is the point.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.features import FbankExtractor, FeatureConfig, prepare_waveform
from pipeline.normalization import Normalization, check_choice, choose_normalization
from ssast.checkpoint import FORMAT, load_checkpoint, read_checkpoint
from ssast.config import SSASTConfig
from ssast.encoder import SpectrogramEncoder

TIMESTAMP_HOP_MS = 40.0
"""Spacing of the timestamp embeddings; HEAR asks for at most 50 ms."""

DEFAULT_CONFIG = SSASTConfig(size="tiny", input_tdim=128, num_masked=1)
"""The random model of ``load_model("")``: tiny, 16x16 patches, 128 mel x 128 frames."""

RELEASED_NORMALIZATION = "audioset"
"""The statistics the released SSAST models were pretrained with (their files hold none)."""


class HearModel(nn.Module):
    """An SSAST encoder with the features and statistics it was trained on: HEAR's model.

    Attributes:
        sample_rate: Hz of the audio the API functions take (the features' rate).
        scene_embedding_size: D.
        timestamp_embedding_size: D.
        batch_size: windows per encoder call (memory knob; results do not depend on it).
    """

    def __init__(
        self,
        encoder: SpectrogramEncoder,
        cfg: SSASTConfig,
        features: FeatureConfig,
        normalization: Normalization,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if features.num_mel_bins != cfg.input_fdim:
            raise ValueError(
                f"the features have num_mel_bins={features.num_mel_bins} but the model takes "
                f"input_fdim={cfg.input_fdim}; the checkpoint's features do not fit its model"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.cfg, self.features, self.normalization = cfg, features, normalization
        self.batch_size = batch_size
        self.sample_rate = int(features.sample_rate_hz)
        self.scene_embedding_size = int(encoder.embed_dim)
        self.timestamp_embedding_size = int(encoder.embed_dim)
        self.extractor = FbankExtractor(features)

    @property
    def window_hop_frames(self) -> int:
        """Half a window, in whole patch time strides (at least one, at most a window's)."""
        stride, t_dim = self.cfg.patch_stride[1], self.cfg.grid[1]
        return stride * min(max(1, self.cfg.input_tdim // 2 // stride), t_dim)


# ------------------------------------------------------------------------ loading
def load_model(
    model_file_path: str = "", *, normalization: str = "model", batch_size: int = 16
) -> HearModel:
    """HEAR's ``load_model``: our checkpoint (pretrained or fine-tuned) or a released .pth.

    Args:
        model_file_path: a checkpoint file; "" gives the random :data:`DEFAULT_CONFIG` model.
        normalization: "model" (the checkpoint's statistics; the AudioSet preset for a
            released file; for one of ours without statistics, the fallback of
            :func:`~pipeline.normalization.choose_normalization`) or a preset name.
        batch_size: windows per encoder call.

    Raises:
        ValueError: not an SSAST checkpoint, or an unknown normalization.
    """
    check_choice(normalization)
    if normalization == "dataset":
        raise ValueError("normalization='dataset': HEAR gives no dataset; use model or a preset")
    if not model_file_path:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            encoder = SpectrogramEncoder(DEFAULT_CONFIG)
        norm = choose_normalization(
            normalization, model=Normalization.preset(RELEASED_NORMALIZATION)
        )
        return HearModel(encoder, DEFAULT_CONFIG, FeatureConfig(), norm, batch_size).eval()
    payload = read_checkpoint(model_file_path)
    try:
        model = load_checkpoint(payload)
    except ValueError as err:  # it names "state dict": name the file instead
        raise ValueError(f"{model_file_path}: {err}") from err
    features = (
        FeatureConfig.from_dict(payload["features"]) if "features" in payload else FeatureConfig()
    )
    norm = choose_normalization(normalization, model=_statistics(payload))
    return HearModel(model.encoder, model.cfg, features, norm, batch_size).eval()


def _statistics(payload: dict[str, Any]) -> Normalization | None:
    """The normalisation a checkpoint was trained with, as jobs/kit/models.py reads it."""
    if payload.get("format") != FORMAT:
        return Normalization.preset(RELEASED_NORMALIZATION)
    stats = payload.get("normalization") or (payload.get("task") or {}).get("normalization")
    if isinstance(stats, list | tuple):  # older model.pt: [mean, std]
        stats = {"mean": stats[0], "std": stats[1]}
    return Normalization.from_dict(stats) if stats else None


# ------------------------------------------------------------------------ the API
def get_timestamp_embeddings(
    audio: torch.Tensor, model: HearModel
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings every :data:`TIMESTAMP_HOP_MS` from 0 to the clips' duration.

    Args:
        audio: (n, L) mono audio in [-1, 1] at ``model.sample_rate``.
        model: from :func:`load_model`.

    Returns:
        ((n, K, D) float32 embeddings, (n, K) float32 timestamps in ms), on audio's device.
    """
    columns, _ = _column_embeddings(audio, model)  # (n, W, t, D)
    clip = _clip_columns(columns, model)  # (n, G, D)
    f = model.features
    shift_ms = 1000 * f.shift_samples / f.sample_rate_hz
    frame_ms = 1000 * f.window_samples / f.sample_rate_hz
    patch_t, stride_t = model.cfg.patch_shape[1], model.cfg.patch_stride[1]
    first_ms = ((patch_t - 1) * shift_ms + frame_ms) / 2  # centre of column 0
    duration_ms = 1000 * audio.shape[1] / model.sample_rate
    times = torch.arange(math.floor(duration_ms / TIMESTAMP_HOP_MS + 1e-9) + 1) * TIMESTAMP_HOP_MS
    with_audio = min(clip.shape[1], math.ceil(_num_frames(audio, model) / stride_t))
    u = ((times - first_ms) / (stride_t * shift_ms)).clamp(0, with_audio - 1)  # (K,) columns
    lo = u.floor().long().clamp(max=max(with_audio - 2, 0))
    hi = (lo + 1).clamp(max=with_audio - 1)
    w = (u - lo).to(clip)[None, :, None]  # (1, K, 1)
    emb = clip[:, lo] * (1 - w) + clip[:, hi] * w  # (n, K, D)
    return emb.to(audio.device), times.float().repeat(audio.shape[0], 1).to(audio.device)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One embedding per clip: token means of each window, weighted by real frames.

    Args:
        audio: (n, L) mono audio in [-1, 1] at ``model.sample_rate``.
        model: from :func:`load_model`.

    Returns:
        (n, D) float32 on audio's device.
    """
    columns, real = _column_embeddings(audio, model)  # (n, W, t, D), (W,)
    weights = (real / real.sum()).to(columns)  # (W,)
    scene = torch.einsum("nwd,w->nd", columns.mean(dim=2), weights)  # window token means
    return scene.to(audio.device)


# ---------------------------------------------------------------------- internals
def _num_frames(audio: torch.Tensor, model: HearModel) -> int:
    """m of every clip (prepare_waveform pads a clip to at least one analysis window)."""
    return model.features.num_frames(max(audio.shape[1], model.features.window_samples))


def _fbank(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n, L) audio -> (n, m, F) normalised log-mel, float32 on the CPU, as the pipeline."""
    if audio.dim() != 2:
        raise ValueError(
            f"audio must be (n_sounds, n_samples) at {model.sample_rate} Hz, got shape "
            f"{tuple(audio.shape)}"
        )
    clips = audio.detach().to("cpu", torch.float32).numpy()
    waves = [prepare_waveform(c[:, None], model.sample_rate, model.features) for c in clips]
    m, F_ = _num_frames(audio, model), model.features.num_mel_bins
    raw = model.extractor(waves, half=True) if waves else []  # float16: the stored features
    x = torch.from_numpy(np.stack(raw)).float() if raw else torch.zeros(0, m, F_)  # (n, m, F)
    frames = np.full(x.shape[0], m)  # every frame is audio: no padding yet
    return torch.from_numpy(model.normalization.apply(x.numpy(), frames))  # the pipeline's rule


def _column_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, L) audio -> ((n, W, t, D) patch tokens averaged over frequency per window and
    time column, (W,) real frames of each window)."""
    x = _fbank(audio, model)  # (n, m, F)
    n, m, F_ = x.shape
    T, hop = model.cfg.input_tdim, model.window_hop_frames
    W = 1 + max(0, math.ceil((m - T) / hop))
    x = F.pad(x, (0, 0, 0, (W - 1) * hop + T - m), value=model.normalization.fill)
    windows = x.unfold(1, T, hop).transpose(2, 3).reshape(n * W, T, F_)  # (n W, T, F)
    real = (m - torch.arange(W) * hop).clamp(max=T)  # (W,) frames that are not padding
    f_dim, t_dim = model.cfg.grid
    C, D = model.encoder.num_extra_tokens, model.scene_embedding_size
    device, dtype = model.encoder.pos_embed.device, model.encoder.pos_embed.dtype
    model.eval()
    out = []
    with torch.no_grad():
        for chunk in windows.split(model.batch_size):
            tokens = model.encoder(chunk.to(device, dtype))[:, C:]  # (b, N, D), freq-major
            out.append(tokens.reshape(-1, f_dim, t_dim, D).mean(dim=1).float())  # (b, t, D)
    columns = torch.cat(out) if out else torch.zeros(0, t_dim, D, device=device)
    return columns.reshape(n, W, t_dim, D), real


def _clip_columns(columns: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n, W, t, D) per-window columns -> (n, G, D) columns of the clip, each the mean over
    the windows that contain it (the window hop is a whole number of columns)."""
    n, W, t_dim, D = columns.shape
    step = model.window_hop_frames // model.cfg.patch_stride[1]  # columns per window hop
    index = (torch.arange(W)[:, None] * step + torch.arange(t_dim)).reshape(-1)  # (W t,)
    G = (W - 1) * step + t_dim
    sums = columns.new_zeros(n, G, D).index_add_(
        1, index.to(columns.device), columns.reshape(n, W * t_dim, D)
    )
    counts = torch.bincount(index, minlength=G).to(columns)  # (G,), >= 1: step <= t
    return sums / counts[:, None]
