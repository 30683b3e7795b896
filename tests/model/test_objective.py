"""The vectorised MSPM objective against a naive per-sample implementation of the paper."""

import torch
import torch.nn.functional as F

from ssast import SSAST


def naive_mspm(model: SSAST, fbank: torch.Tensor, mask_c: torch.Tensor, mask_g: torch.Tensor):
    """The original code's per-clip loops, written out independently of ssast internals.

    Uses the patch conv on the image and nn.Unfold for targets (not our patchify/matmul),
    and one clip at a time through the encoder blocks.
    """
    enc, cfg = model.encoder, model.cfg
    C = enc.num_extra_tokens
    nce_sum, correct, sq_err, n_err = 0.0, 0, 0.0, 0
    for b in range(fbank.shape[0]):
        image = fbank[b : b + 1].transpose(1, 2).unsqueeze(1)  # (1, 1, F, T)
        targets = F.unfold(image, cfg.patch_shape, stride=cfg.patch_stride)[0].T  # (N, P)
        emb = enc.patch_embed.proj(image).flatten(2).transpose(1, 2)[0]  # (N, D)

        def encode(mask, emb=emb):
            x = emb.clone()
            for i in mask.tolist():
                x[i] = model.mask_embed[0, 0]
            extra = [enc.cls_token[0]] + ([enc.dist_token[0]] if C == 2 else [])
            x = torch.cat(extra + [x], 0)[None] + enc.pos_embed
            for blk in enc.blocks:
                x = blk(x)
            return enc.norm(x)[0]

        mc, mg = mask_c[b], mask_g[b]
        out = encode(mc)
        M = mc.numel()
        x_m = targets[mc]  # (M, P)
        pred = model.cpredlayer(out[mc + C])  # (M, P)
        total = x_m @ pred.T  # (M, M)
        nce_sum = nce_sum + torch.diag(torch.log_softmax(total, dim=-1)).sum()
        correct += int((torch.softmax(total, dim=-1).argmax(dim=0) == torch.arange(M)).sum())

        out_g = encode(mg)
        rec = model.gpredlayer(out_g[mg + C])
        sq_err = sq_err + ((rec - targets[mg]) ** 2).sum()
        n_err += rec.numel()
    B, M = fbank.shape[0], mask_c.shape[1]
    nce = -nce_sum / (B * M)
    mse = sq_err / n_err
    return nce, correct / (B * M), mse


def test_single_pass_equals_naive_reference_on_the_same_mask(small_model, fbank):
    mask = small_model.sample_mask(3, generator=torch.Generator().manual_seed(0))
    out = small_model.pretrain_loss(fbank, mask_index=mask)
    nce, acc, mse = naive_mspm(small_model, fbank, mask, mask)
    torch.testing.assert_close(out["nce"], nce.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["mse"], mse.detach(), atol=1e-5, rtol=1e-5)
    assert abs(float(out["acc"]) - acc) < 1e-6
    loss = nce + 10 * mse
    torch.testing.assert_close(out["loss"].detach(), loss.detach(), atol=1e-5, rtol=1e-5)


def test_two_pass_equals_naive_reference_with_two_masks(small_model, fbank):
    g = torch.Generator().manual_seed(5)
    out = small_model.pretrain_loss(fbank, two_pass=True, generator=g)
    g = torch.Generator().manual_seed(5)
    mask_c = small_model.sample_mask(3, generator=g)
    mask_g = small_model.sample_mask(3, generator=g)
    assert not torch.equal(mask_c, mask_g)
    nce, acc, mse = naive_mspm(small_model, fbank, mask_c, mask_g)
    torch.testing.assert_close(out["nce"], nce.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["mse"], mse.detach(), atol=1e-5, rtol=1e-5)
    assert abs(float(out["acc"]) - acc) < 1e-6


def test_gradient_matches_naive_reference(small_model, fbank):
    mask = small_model.sample_mask(3, generator=torch.Generator().manual_seed(2))
    small_model.pretrain_loss(fbank, mask_index=mask)["loss"].backward()
    fast = {n: p.grad.clone() for n, p in small_model.named_parameters()}
    small_model.zero_grad()
    nce, _, mse = naive_mspm(small_model, fbank, mask, mask)
    (nce + 10 * mse).backward()
    for name, p in small_model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_gradients_reach_every_trainable_parameter(small_model, fbank):
    small_model.pretrain_loss(fbank, generator=torch.Generator().manual_seed(0))["loss"].backward()
    for name, p in small_model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_silence_gives_finite_loss_and_gradients(small_model):
    silence = torch.zeros(2, 64, 128)
    out = small_model.pretrain_loss(silence, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    assert all(torch.isfinite(p.grad).all() for p in small_model.parameters())


def test_generative_weight_is_configurable(small_cfg, fbank):
    torch.manual_seed(0)
    model = SSAST(small_cfg.replace(generative_weight=0.0))
    out = model.pretrain_loss(fbank, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["loss"].detach(), out["nce"])


def test_short_overfit_lowers_the_loss(small_model, fbank):
    small_model.train()
    opt = torch.optim.AdamW(small_model.parameters(), lr=1e-3)
    mask = small_model.sample_mask(3, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = small_model.pretrain_loss(fbank, mask_index=mask)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses
