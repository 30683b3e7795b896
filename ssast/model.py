"""SSAST: the pretraining model (encoder + mask token + two pretext heads).

Shapes: B batch, T frames, F mel bins, N patches, M masked patches, P values per
patch, C extra tokens, D width.

Pretraining runs the masked input through the encoder **once** and applies both
pretext heads to the same masked positions. The original runs the encoder twice
with two independent masks, one per loss; ``two_pass=True`` reproduces that as the
faithful baseline. Both are plain batched tensor code: no loop over clips.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ssast.config import SSASTConfig
from ssast.encoder import SpectrogramEncoder
from ssast.masking import mask_to_bool, sample_cluster_mask, sample_random_mask
from ssast.objective import gather_patches, info_nce, reconstruction_mse
from ssast.original import to_original_state_dict
from ssast.patching import adapt_pos_embed, patchify


def _pretext_head(dim: int, out_dim: int) -> nn.Sequential:
    # Linear -> ReLU -> Linear with PyTorch default init, as the original (keys .0 and .2).
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out_dim))


class SSAST(nn.Module):
    """Self-supervised audio spectrogram transformer.

    Attributes:
        encoder: :class:`SpectrogramEncoder` (the original's ``v``).
        mask_embed: (1, 1, D) learned token that replaces masked patch embeddings.
        cpredlayer: discriminative head, D -> P.
        gpredlayer: generative head, D -> P.
    """

    def __init__(self, cfg: SSASTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.preset.embed_dim
        self.encoder = SpectrogramEncoder(cfg)
        self.mask_embed = nn.Parameter(nn.init.xavier_normal_(torch.zeros(1, 1, D)))
        self.cpredlayer = _pretext_head(D, cfg.patch_dim)
        self.gpredlayer = _pretext_head(D, cfg.patch_dim)

    # ----------------------------------------------------------------- encoding
    def encode(self, fbank: torch.Tensor, with_cls: bool = False) -> torch.Tensor:
        """Encode spectrograms.

        Args:
            fbank: (B, T, F) normalised log-mel, T = input_tdim, F = input_fdim.
            with_cls: keep the C extra tokens in front.

        Returns:
            (B, N, D) patch tokens after the final LayerNorm, or (B, C + N, D).
        """
        self._check_input(fbank)
        tokens = self.encoder(fbank)
        return tokens if with_cls else tokens[:, self.encoder.num_extra_tokens :]

    # -------------------------------------------------------------- pretraining
    def sample_mask(
        self,
        batch_size: int,
        num_masked: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(B, M) patch indices to mask, by the config's strategy (cluster or random)."""
        cfg = self.cfg
        M = cfg.num_masked if num_masked is None else num_masked
        if cfg.resolved_mask_strategy == "cluster":
            return sample_cluster_mask(
                batch_size, cfg.grid, M, cfg.cluster_sizes, generator, device
            )
        return sample_random_mask(batch_size, cfg.num_patches, M, generator, device)

    def pretrain_loss(
        self,
        fbank: torch.Tensor,
        mask_index: torch.Tensor | None = None,
        num_masked: int | None = None,
        two_pass: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Masked spectrogram patch modelling loss.

        Args:
            fbank: (B, T, F) normalised log-mel.
            mask_index: (B, M) long, optional: which patches to mask. Drawn with
                ``generator`` when None. With ``two_pass`` a given mask serves both passes.
            num_masked: M when the mask is drawn (default: ``cfg.num_masked``).
            two_pass: the original's joint objective: two independent masks and two
                encoder passes, one for each loss.
            generator: random source for the masks.

        Returns:
            "loss" = nce + generative_weight * mse (with gradient), and detached "nce",
            "mse", "acc".
        """
        self._check_input(fbank)
        if not self.cfg.is_pretraining_geometry:
            raise ValueError(
                f"pretraining needs non-overlapping patches (patch_stride == patch_shape); "
                f"this model has patch_shape={self.cfg.patch_shape}, "
                f"patch_stride={self.cfg.patch_stride} (a fine-tuning geometry)"
            )
        B = fbank.shape[0]
        given = mask_index is not None
        if not given:
            mask_index = self.sample_mask(B, num_masked, generator, fbank.device)
        self._check_mask(mask_index, B)
        patches = patchify(fbank, self.cfg.patch_shape, self.cfg.patch_stride)  # (B, N, P)
        targets = gather_patches(patches, mask_index).detach()  # (B, M, P)

        if two_pass:
            second = (
                mask_index if given else self.sample_mask(B, num_masked, generator, fbank.device)
            )
            hidden_c = self._masked_hidden(patches, mask_index)
            hidden_g = self._masked_hidden(patches, second)
            targets_g = gather_patches(patches, second).detach()
        else:
            hidden_c = hidden_g = self._masked_hidden(patches, mask_index)  # (B, M, D)
            targets_g = targets
        nce, acc = info_nce(targets, self.cpredlayer(hidden_c))
        mse = reconstruction_mse(targets_g, self.gpredlayer(hidden_g))
        loss = nce + self.cfg.generative_weight * mse
        return {"loss": loss, "nce": nce.detach(), "mse": mse.detach(), "acc": acc}

    def forward(
        self,
        fbank: torch.Tensor,
        mask_index: torch.Tensor | None = None,
        num_masked: int | None = None,
        two_pass: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The pretraining model's forward is its loss (:meth:`pretrain_loss`), so that
        DistributedDataParallel, which synchronises gradients through ``forward``, works."""
        return self.pretrain_loss(fbank, mask_index, num_masked, two_pass, generator)

    def reconstruct(self, fbank: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
        """Generative-head output for the masked patches, (B, M, P), for pictures and probes."""
        self._check_input(fbank)
        self._check_mask(mask_index, fbank.shape[0])
        patches = patchify(fbank, self.cfg.patch_shape, self.cfg.patch_stride)
        return self.gpredlayer(self._masked_hidden(patches, mask_index))

    def _masked_hidden(self, patches: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
        """Encode with the masked patches replaced by the mask token; outputs at the mask.

        Args:
            patches: (B, N, P) unmasked patches.
            mask_index: (B, M).

        Returns:
            (B, M, D) encoder outputs at the masked positions.
        """
        emb = self.encoder.patch_embed.embed_patches(patches)  # (B, N, D)
        masked = mask_to_bool(mask_index, emb.shape[1]).unsqueeze(-1)  # (B, N, 1)
        emb = torch.where(masked, self.mask_embed.to(emb.dtype), emb)  # (B, N, D)
        out = self.encoder.forward_tokens(emb)  # (B, C + N, D)
        return gather_patches(out, mask_index + self.encoder.num_extra_tokens)  # (B, M, D)

    # ------------------------------------------------------------- adaptation
    def adapted(
        self,
        patch_stride: tuple[int, int] | None = None,
        input_fdim: int | None = None,
        input_tdim: int | None = None,
    ) -> SSAST:
        """A copy for a new input size or patch stride, positions cropped/resized as the
        original fine-tuning does (:func:`ssast.patching.adapt_pos_embed`).

        The patch shape cannot change (the patch projection would not fit).
        """
        cfg = self.cfg
        new_cfg = cfg.replace(
            patch_stride=patch_stride or cfg.patch_stride,
            input_fdim=input_fdim or cfg.input_fdim,
            input_tdim=input_tdim or cfg.input_tdim,
            num_masked=1,
        )
        new_cfg = new_cfg.replace(num_masked=min(cfg.num_masked, new_cfg.num_patches))
        state = dict(self.state_dict())
        state["encoder.pos_embed"] = adapt_pos_embed(
            state["encoder.pos_embed"].detach(),
            cfg.preset.num_extra_tokens,
            cfg.grid,
            new_cfg.grid,
        )
        model = SSAST(new_cfg)
        model.load_state_dict(state)
        return model.to(self.mask_embed.device)

    # ------------------------------------------------------------ checkpoints
    def to_original_state_dict(self, include_timm_heads: bool = True) -> dict[str, torch.Tensor]:
        """State dict in the released SSAST checkpoints' layout (``module.``-prefixed)."""
        return to_original_state_dict(self, include_timm_heads=include_timm_heads)

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """As ``nn.Module.load_state_dict``, but a shape mismatch is a ``ValueError``."""
        own = self.state_dict()
        bad = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state_dict.items()
            if k in own and own[k].shape != v.shape
        ]
        if bad:
            raise ValueError(
                "checkpoint does not fit this model config "
                f"({self.cfg.size}, patch_shape={self.cfg.patch_shape}, grid={self.cfg.grid}): "
                + "; ".join(bad[:5])
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ checks
    def _check_input(self, fbank: torch.Tensor) -> None:
        want = (self.cfg.input_tdim, self.cfg.input_fdim)
        if fbank.dim() != 3 or tuple(fbank.shape[1:]) != want:
            raise ValueError(
                f"fbank must be (batch, {want[0]} frames, {want[1]} mel bins), got "
                f"{tuple(fbank.shape)}; pad/crop to input_tdim or use model.adapted(input_tdim=...)"
            )

    def _check_mask(self, mask_index: torch.Tensor, batch_size: int) -> None:
        if mask_index.dim() != 2 or mask_index.shape[0] != batch_size:
            raise ValueError(
                f"mask_index must be (batch={batch_size}, M), got {tuple(mask_index.shape)}"
            )
        if mask_index.dtype != torch.long:
            raise ValueError(f"mask_index must be torch.long, got {mask_index.dtype}")
