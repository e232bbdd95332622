"""
Looking into a trained run: which of its test images the analysis uses, and what its model makes of
them: a reconstruction of masked images, how strongly each pixel moves the latent code (saliency), where
the MAE's CLS token attends. analyze.py measures with these and figures.py draws with them; this module
imports neither, so both can import it.
"""
import torch
import torch.nn.functional as F

from data import to_float
from mae import MAE, random_masking
from mcae import random_mask

# how many test images analyze.measure uses, and the studies' settings it sweeps; the figures show the same
N_MEASURE = 1000                              # test images behind the PSNR sweeps (fewer if the test set is)
NOISE_VARIANCES = [0.01, 0.02, 0.05, 0.1]     # the MLP report's noise levels, as variances
MASK_RATIOS = [0.1, 0.3, 0.5]                 # the CIFAR-10 assignment's MCAE mask ratios


# -----------------------------------------------------------------------------
# test images


def rank_in_class(labels):
    """For each test image, how many images of its class come before it: (N,) -> (N,)."""
    onehot = F.one_hot(labels.cpu())
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def class_indices(labels, n):
    """Indices of n test images, one class after another (0, 1, 2, ..., 0, 1, ...): a row shows every class."""
    labels = labels.cpu()
    return torch.argsort(rank_in_class(labels) * (int(labels.max()) + 1) + labels)[:n]


def test_images(run, idx=N_MEASURE):
    """Test images idx (a tensor of indices, or a count: the first ones) as floats in [0, 1]: (n, C, H, W)."""
    if isinstance(idx, int):
        idx = torch.arange(min(idx, len(run.data.test_x)))
    return to_float(run.data.test_x[idx.to(run.data.test_x.device)])


@torch.no_grad()
def in_batches(function, x, batch_size=500):
    return torch.cat([function(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def is_masked(kind, config):
    """Masked models are scored on the hidden pixels: a whole-image PSNR counts the visible part too."""
    return kind == "mae" or (kind == "mcae" and config["mask_ratio"] > 0)


# -----------------------------------------------------------------------------
# what a model makes of them


@torch.no_grad()
def masked_reconstruction(model, x, mask_ratio, mask_type="block", block_size=8, seed=0):
    """(input, reconstruction, mask) of the MAE or any conv/MLP AE at the mask setting given. The seed is
    fixed, so two models given the same setting see the same masks. The MAE hides its own patches."""
    torch.manual_seed(seed)
    if isinstance(model, MAE):
        _, out = model(x, mask_ratio=mask_ratio)
        return out["input"], out["recon"], out["mask"]
    block = block_size if mask_type == "block" else 1
    mask = random_mask(len(x), x.shape[2], x.shape[3], block, mask_ratio, x.device).to(x.dtype)  # (B, 1, H, W)
    inp = x * (1 - mask)
    return inp, in_batches(lambda batch: model.decoder(model.encoder(batch)), inp), mask


def jacobian_energy(model, x):
    """For each input pixel, how strongly it moves the latent code: sum over latent units d and channels c
    of (dz_d / dx_{c,h,w})^2, the pixel's share of the squared Frobenius norm of the Jacobian dz/dx.
    (B, C, H, W) -> (B, H, W). Each image's Jacobian whole by reverse mode (torch.func.jacrev): one
    backward pass per latent unit, batched, so the memory is D copies of one image."""
    def encode_one(image):  # (C, H, W) -> (D,)
        return model.encode(image.unsqueeze(0)).squeeze(0)

    return torch.stack([torch.func.jacrev(encode_one)(image).pow(2).sum(dim=(0, 1)) for image in x])  # (B, H, W)


@torch.no_grad()
def cls_attention(model, x, mask_ratio=0.0, seed=0):
    """Last-layer attention of the CLS token to each patch the encoder saw, per head, at pixel size, in
    units of an even share (1 = as much as if the head looked at every patch seen alike, 10 = ten times
    that), so that heads and images can be compared: -> (B, heads, H, W), and the mask (B, 1, H, W),
    1 = hidden (weight 0). The CLS's weight on itself is left out, as in MAE.attention_maps: mask ratio 0
    gives its maps times the number of patches."""
    B, _, H, W = x.shape
    p = model.config.patch_size
    torch.manual_seed(seed)
    tokens, mask, ids_restore = random_masking(model.embed(x), mask_ratio)  # (B, len_keep, D), (B, L), (B, L)
    h = model.with_cls(tokens)                                               # (B, 1 + len_keep, D)
    for block in model.blocks[:-1]:
        h = block(h)
    _, attn = model.blocks[-1](h, return_attention=True)                     # (B, heads, 1 + keep, 1 + keep)
    seen = attn[:, :, 0, 1:].float()                                         # (B, heads, len_keep): CLS's row
    seen = seen / seen.mean(dim=-1, keepdim=True)  # as MAE.attention_maps, without the CLS's share; mean 1
    # the kept patches come first in shuffled order: zeros for the hidden ones, then unshuffle
    weights = torch.cat([seen, seen.new_zeros(B, seen.shape[1], mask.shape[1] - seen.shape[2])], dim=2)
    weights = torch.gather(weights, 2, ids_restore[:, None].expand(-1, seen.shape[1], -1))  # (B, heads, L)
    maps, mask = (m.reshape(B, -1, H // p, W // p).repeat_interleave(p, 2).repeat_interleave(p, 3)
                  for m in (weights, mask))                                  # a patch's weight on its p x p pixels
    return maps, mask
