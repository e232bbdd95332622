"""
MAE: the masked autoencoder of He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners",
with a small Vision Transformer written out by hand.

The image is cut into p x p patches. Some of them (mask_ratio) are thrown away at random, and the
encoder, a ViT, sees only the rest plus a CLS token. A lighter decoder gets the encoded visible patches
back in place, a shared learned "mask token" in every hidden slot, and predicts the pixels of every
patch; the loss is the mean squared error on the hidden patches only. Because the encoder never
processes the hidden patches, pretraining is cheap, and filling in whole patches cannot be done by
copying neighbouring pixels, so the encoder has to learn what objects look like.

Read top to bottom, the paper's model first:
- patchify / unpatchify: images <-> sequences of flattened patches; sincos_pos_embed_2d: fixed positions
- random_masking: "shuffle by random noise, keep the first L * (1 - mask_ratio)", ids_restore to unshuffle;
  add_mask_tokens: every patch back in place, a mask token where one was hidden; masked_mse: the loss
- Attention, drop_branch, Block: a pre-norm Transformer block (stochastic depth for fine-tuning)
- MaskedAutoencoderViT: the paper's model, encoder, decoder, loss (the reference code's name for it)
Then, marked, what nanoAE adds to it (delete it from a copy and MaskedAutoencoderViT still trains):
- MAE: the model contract the rest of nanoAE uses (forward -> (loss, pictures), encode for the probes),
  the fine-tuning encoder, attention maps for the figures, the checks of a config, and the decoder conv.

The masking, ids_restore, loss, positions and decoder follow the paper's reference code
(github.com/facebookresearch/mae): with the same weights and mask, the same output. Unlike it, nothing
here depends on timm or numpy, and any channel count and any patch size that divides the image work.
The defaults are for minutes on a CPU and small images: 4x4-pixel patches (49 on MNIST) of which half
are hidden, where the paper hides three quarters of ImageNet's; with a quarter visible, a short run's
features stay far below raw pixels. One change to the reference: the prediction layer starts at zero,
so training starts from predicting 0 (with norm_pix_loss: the patch mean) instead of from random outputs
whose error is many times that of predicting 0.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class MAEConfig:
    in_channels: int = 1            # image channels: 1 for (Fashion-)MNIST, 3 for CIFAR-10
    image_size: int = 28            # image height = width: 28 or 32 (must be divisible by patch_size)
    patch_size: int = 4             # side of a square patch: 28/4 -> 7x7 = 49 patches, 32/4 -> 64
    embed_dim: int = 128            # encoder width (a multiple of 4, for the 2D sin-cos positions)
    depth: int = 6                  # number of encoder Transformer blocks
    num_heads: int = 4              # encoder attention heads (embed_dim must be divisible by it)
    mlp_ratio: float = 4.0          # hidden width of every block's MLP, as a multiple of the block's width
    decoder_embed_dim: int = 64     # decoder width (a multiple of 4); the decoder is lighter than the encoder
    decoder_depth: int = 2          # number of decoder Transformer blocks
    decoder_num_heads: int = 4      # decoder attention heads
    mask_ratio: float = 0.5         # fraction of patches hidden from the encoder during pretraining (paper: 0.75)
    norm_pix_loss: bool = False     # target: each patch minus its mean, over its std (paper: better features)
    # nanoAE's additions (class MAE)
    decoder_conv: int = 0           # kernel of a conv over the decoder's grid of patches (odd; 0 = none, the paper's)
    pool: str = "cls"               # encode(): 'cls' (the CLS token) or 'mean' (mean of the patch tokens)
    drop_path: float = 0.1          # fine-tuning: stochastic depth in encode() while training (see drop_branch)
    finetune_mask_ratio: float = 0.0  # fine-tuning: fraction of patches encode() drops while training (0 = none)

# -----------------------------------------------------------------------------
# patches and positions


def patchify(imgs, p):
    """(B, C, H, W) -> (B, L, p*p*C), L = (H/p) * (W/p) patches in row-major order.

    Each patch is flattened as (p, p, C): row within the patch, column, then channel, as in the
    reference code, so patch 0 is imgs[:, :, :p, :p] and patch 1 is imgs[:, :, :p, p:2p]. Copies alone.
    """
    B, C, H, W = imgs.shape
    if H % p != 0 or W % p != 0:
        raise ValueError(f"patch size {p} does not divide the image size {H}x{W}")
    h, w = H // p, W // p
    x = imgs.reshape(B, C, h, p, w, p)                 # (B, C, h, p, w, p)
    x = x.permute(0, 2, 4, 3, 5, 1)                    # (B, h, w, p, p, C)
    return x.reshape(B, h * w, p * p * C)              # (B, L, p*p*C)


def unpatchify(x, p, C):
    """(B, L, p*p*C) -> (B, C, H, W) for square images: the inverse of patchify. Copies alone."""
    B, L, D = x.shape
    h = w = math.isqrt(L)
    if h * w != L or D != p * p * C:
        raise ValueError(f"cannot unpatchify {L} patches of {D} values into a square image "
                         f"of {p}x{p} patches with {C} channels")
    x = x.reshape(B, h, w, p, p, C)                    # (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                    # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)               # (B, C, H, W)


def sincos_pos_embed_1d(embed_dim, pos):
    """(M,) positions -> (M, embed_dim): sin(pos * omega_i) then cos(pos * omega_i),
    omega_i = 1 / 10000^(2i / embed_dim) for i = 0 .. embed_dim/2 - 1 (Vaswani et al., 2017). Copies alone."""
    if embed_dim % 2 != 0:
        raise ValueError(f"1D sin-cos positions need an even width, got {embed_dim}")
    i = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / 10000 ** (2 * i / embed_dim)         # (D/2,) frequencies, fastest first
    angles = pos.double()[:, None] * omega[None, :]    # (M, D/2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (M, D)


def sincos_pos_embed_2d(embed_dim, grid_size, cls_token=True):
    """Fixed 2D sin-cos positions for a grid_size x grid_size grid of patches, row-major like patchify.

    Returns (1 + L, D) with an all-zero first row for the CLS token (it has no position), or (L, D).
    Half the dims encode one coordinate, half the other, each with 1D sin-cos of width D/2. As in the
    reference code, the first half encodes the column (x) and the second half the row (y).
    Copy with: sincos_pos_embed_1d.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"2D sin-cos positions need a width divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, device="cpu")    # built once: the model's buffer moves with .to(device)
    rows = coords.repeat_interleave(grid_size)         # (L,) 0,0,..,0,1,1,.. patch k is in row k // g
    cols = coords.repeat(grid_size)                    # (L,) 0,1,..,g-1,0,1,.. and column k % g
    emb = torch.cat([sincos_pos_embed_1d(embed_dim // 2, cols),
                     sincos_pos_embed_1d(embed_dim // 2, rows)], dim=1)  # (L, D)
    if cls_token:
        emb = torch.cat([emb.new_zeros(1, embed_dim), emb], dim=0)  # (1 + L, D)
    return emb.float()


# -----------------------------------------------------------------------------
# masking, putting the patches back, the loss


def random_masking(x, mask_ratio):
    """Keep a random subset of int(L * (1 - mask_ratio)) patches of each image.

    Every image draws its own uniform noise; sorting it gives a random permutation, ids_shuffle, and
    the first len_keep patches of it are kept. ids_restore = argsort(ids_shuffle) is the inverse
    permutation: gathering a shuffled sequence with it puts every patch back in place.

    x: (B, L, D) -> x_visible (B, len_keep, D), mask (B, L) with 1 = hidden, ids_restore (B, L). Copies alone.
    """
    B, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    noise = torch.rand(B, L, device=x.device)          # (B, L) in [0, 1)
    ids_shuffle = torch.argsort(noise, dim=1)          # (B, L): smallest noise first, these are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)    # (B, L)
    ids_keep = ids_shuffle[:, :len_keep]               # (B, len_keep)
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (B, len_keep, D)
    # the mask is built in shuffled order (0s then 1s) and unshuffled like any other sequence
    mask = torch.ones(B, L, device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)          # (B, L)
    return x_visible, mask, ids_restore


def add_mask_tokens(visible, mask_token, ids_restore):
    """The decoder's input: every patch back in its place, the mask token in each hidden one.

    visible: (B, len_keep, D) encoded visible patches in random_masking's shuffled order; mask_token: (1, 1, D);
    ids_restore: (B, L). In shuffled order the visible patches come first and the hidden ones after, so the
    mask tokens are appended there and the whole sequence unshuffled with ids_restore. -> (B, L, D).
    Copies alone.
    """
    B, len_keep, D = visible.shape
    mask_tokens = mask_token.expand(B, ids_restore.shape[1] - len_keep, -1)  # (B, L - len_keep, D)
    shuffled = torch.cat([visible, mask_tokens], dim=1)                      # (B, L, D) shuffled
    return torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))  # (B, L, D) in place


def masked_mse(pred, target, mask):
    """Mean squared error per patch, averaged over the hidden patches only (mask == 1): the visible ones
    are in the input, so scoring them would reward copying. pred, target: (B, L, p*p*C), mask: (B, L).
    Copies alone."""
    loss = ((pred - target) ** 2).mean(dim=-1)         # (B, L) mean squared error per patch
    return (loss * mask).sum() / mask.sum().clamp(min=1)  # clamp: mask_ratio 0 gives 0, not nan


# -----------------------------------------------------------------------------
# the Transformer


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q k^T / sqrt(head_dim)) v, per head, then a projection. As the
    DAE-vs-MAE study's, it can return its attention weights to be looked at (return_attention). Copies alone."""

    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)             # q, k and v of every head in one matmul
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, return_attention=False):
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)           # each (B, heads, T, hd)
        if return_attention:
            # written out, so the weights can be looked at
            attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, T, T)
            attn = attn.softmax(dim=-1)                # each row: how much a token takes from every token
            y = attn @ v                               # (B, heads, T, hd)
        else:
            # the same computation in one fused kernel that never holds the T x T weights: faster once
            # sequences are long (2x2 patches of MNIST give the decoder 197 tokens)
            y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)         # (B, T, D): heads side by side again
        y = self.proj(y)
        return (y, attn) if return_attention else y


def drop_branch(branch, drop_path, training):
    """Stochastic depth (Huang et al. 2016), for fine-tuning: in training, each image skips the residual
    branch with probability drop_path, and the branches kept are scaled by 1 / (1 - drop_path). Copies alone."""
    if not training or drop_path == 0:
        return branch
    keep = (torch.rand(branch.shape[0], 1, 1, device=branch.device) >= drop_path).to(branch.dtype)
    return branch * keep / (1 - drop_path)            # (B, T, D), whole images' branches zeroed


class Block(nn.Module):
    """Pre-norm Transformer block: x + Attention(LN(x)), then x + MLP(LN(x)); drop_path: stochastic depth
    (0 in pretraining). Copy with: Attention, drop_branch."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, drop_path=0.0):
        x = x + drop_branch(self.attn(self.norm1(x)), drop_path, self.training)
        x = x + drop_branch(self.mlp(self.norm2(x)), drop_path, self.training)
        return x


# -----------------------------------------------------------------------------
# the masked autoencoder, as the paper


class MaskedAutoencoderViT(nn.Module):
    """The paper's masked autoencoder: a ViT encoder on the visible patches, a light decoder on all of them,
    the loss on the hidden ones. forward(imgs, mask_ratio) -> (loss, pred (B, L, p*p*C), mask (B, L)). Its
    config: MAEConfig, or any object with the same fields.
    Copy with: patchify, sincos_pos_embed_2d, sincos_pos_embed_1d, random_masking, add_mask_tokens, masked_mse,
    Attention, Block, drop_branch."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C, p, D, Dd = config.in_channels, config.patch_size, config.embed_dim, config.decoder_embed_dim
        grid = config.image_size // p
        self.num_patches = grid * grid

        # encoder: a Linear on flattened patches (the same as a stride-p p x p conv), CLS, ViT blocks
        self.patch_embed = nn.Linear(p * p * C, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        # fixed, not learned: persistent buffers travel with the state dict but get no gradient
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, grid).unsqueeze(0))  # (1, 1 + L, D)
        self.blocks = nn.ModuleList([Block(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(D, eps=1e-6)

        # decoder: narrower, shallower, used only for pretraining
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))  # one learned token for every hidden patch
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(Dd, grid).unsqueeze(0))  # (1, 1 + L, Dd)
        self.decoder_blocks = nn.ModuleList([Block(Dd, config.decoder_num_heads, config.mlp_ratio)
                                             for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.decoder_pred = nn.Linear(Dd, p * p * C)   # pixels of one patch
        self.initialize_weights()

    def initialize_weights(self):
        """As the reference code: xavier_uniform Linear weights, zero biases, LayerNorm (1, 0),
        CLS and mask tokens normal(std=0.02). Unlike it, the prediction layer starts at zero: every patch
        is first predicted as 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # xavier_uniform treats the patch embedding like any Linear: fan-in p*p*C, fan-out D
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.zeros_(self.decoder_pred.weight)

    # -- encoder --

    def embed(self, x):
        """(B, C, H, W) -> (B, L, D) patch tokens with their positions, in patchify order."""
        patches = patchify(x, self.config.patch_size)  # (B, L, p*p*C)
        return self.patch_embed(patches) + self.pos_embed[:, 1:]  # (B, L, D)

    def with_cls(self, tokens):
        """Prepend the CLS token (its position row is zero): (B, N, D) -> (B, 1 + N, D)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, tokens], dim=1)

    def forward_encoder(self, x, mask_ratio):
        """Encode the visible patches: -> latent (B, 1 + len_keep, D), mask (B, L), ids_restore (B, L)."""
        tokens = self.embed(x)                         # (B, L, D)
        # positions are added before masking, so each kept token still knows where it came from
        tokens, mask, ids_restore = random_masking(tokens, mask_ratio)  # (B, len_keep, D)
        h = self.with_cls(tokens)                      # (B, 1 + len_keep, D)
        for block in self.blocks:
            h = block(h)
        return self.norm(h), mask, ids_restore

    # -- decoder --

    def forward_decoder(self, latent, ids_restore):
        """(B, 1 + len_keep, D) encoded visible patches -> (B, L, p*p*C) predicted pixels of every patch:
        every patch back in place, positions added, then decode_tokens (which MAE, below, extends)."""
        h = self.decoder_embed(latent)                 # (B, 1 + len_keep, Dd)
        patches = add_mask_tokens(h[:, 1:], self.mask_token, ids_restore)  # (B, L, Dd), in place
        h = torch.cat([h[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1 + L, Dd)
        return self.decode_tokens(h)

    def decode_tokens(self, h):
        """The decoder's blocks on (B, 1 + L, Dd) tokens -> (B, L, p*p*C) pixels, the CLS token dropped."""
        for block in self.decoder_blocks:
            h = block(h)
        h = self.decoder_norm(h)
        return self.decoder_pred(h)[:, 1:]             # (B, L, p*p*C)

    # -- loss --

    def patch_stats(self, x):
        """Mean and std of every target patch: (B, L, 1) each, for norm_pix_loss."""
        target = patchify(x, self.config.patch_size)   # (B, L, p*p*C)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5  # eps: flat (all-black) patches
        return mean, std

    def forward_loss(self, x, pred, mask):
        """masked_mse of the predictions against the pixels of x (B, C, H, W), or, with norm_pix_loss,
        against each patch normalised by its own mean and std."""
        target = patchify(x, self.config.patch_size)   # (B, L, p*p*C)
        if self.config.norm_pix_loss:
            mean, std = self.patch_stats(x)
            target = (target - mean) / std
        return masked_mse(pred, target, mask)

    def forward(self, x, mask_ratio=None):
        """Pretraining's forward pass on x (B, C, H, W) in [0, 1]: embed, mask, encode, decode, loss, with
        mask_ratio of the patches hidden (default: the config's). -> (loss, pred (B, L, p*p*C), mask (B, L))."""
        mask_ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)  # (B, L, p*p*C)
        return self.forward_loss(x, pred, mask), pred, mask


# -----------------------------------------------------------------------------
# what nanoAE adds to the paper's model: a copy without it still trains MaskedAutoencoderViT


def check_config(config):
    """Refuse, in words, a config the MAE cannot be built from (a ValueError). Copies alone."""
    S, p = config.image_size, config.patch_size
    if S % p != 0:
        raise ValueError(f"patch size {p} does not divide the image size {S}")
    if not 0 <= config.drop_path < 1:
        raise ValueError(f"drop_path must be in [0, 1), got {config.drop_path}")
    if config.pool not in ("cls", "mean"):
        raise ValueError(f"unknown pool {config.pool!r}: use 'cls' or 'mean'")
    if config.decoder_conv < 0 or (config.decoder_conv and config.decoder_conv % 2 == 0):
        raise ValueError(f"decoder_conv must be 0 or an odd kernel size, got {config.decoder_conv}")
    num_patches = (S // p) ** 2
    for name in ("mask_ratio", "finetune_mask_ratio"):
        ratio = getattr(config, name)
        if int(num_patches * (1 - ratio)) < 1:
            raise ValueError(f"{name} {ratio} leaves none of the {num_patches} patches visible: the encoder "
                             f"would see nothing (use at most {math.floor(1000 * (1 - 1 / num_patches)) / 1000})")


class MAE(MaskedAutoencoderViT):
    """The MAE as the rest of nanoAE uses it (the model contract): forward(x) -> (loss, out), encode(x) for
    the probes; the fine-tuning encoder (stochastic depth, dropped patches), attention maps for the figures,
    the config's checks, and decoder_conv: a k x k convolution over the grid of decoder tokens before the
    decoder blocks, adding to every token what its neighbours hold. The conv fills hidden patches from
    their visible neighbours from the first step, where attention must first learn from the positions
    which tokens are neighbours: sharper reconstructions early, but an encoder whose tokens need only
    describe themselves, so poorer features. It sees only what the decoder sees (encoded visible patches
    and mask tokens): nothing hidden leaks in. Copy with: all of mae.py."""

    def __init__(self, config):
        check_config(config)
        super().__init__(config)
        # every patch token reads its k x k neighbourhood of the grid (visible and mask tokens alike);
        # torch's default init
        k, Dd = config.decoder_conv, config.decoder_embed_dim
        self.grid = config.image_size // config.patch_size
        self.decoder_conv = nn.Conv2d(Dd, Dd, k, padding=k // 2) if k else None

    def decode_tokens(self, h):
        if self.decoder_conv is not None:
            # the k x k neighbourhood of every patch, diagonals included, each position through weights of
            # its own: the way from a hidden patch to the visible ones next to it is there from the first step
            B, _, Dd = h.shape
            grid = h[:, 1:].transpose(1, 2).reshape(B, Dd, self.grid, self.grid)  # (B, Dd, g, g), row-major
            patches = h[:, 1:] + self.decoder_conv(grid).flatten(2).transpose(1, 2)  # (B, L, Dd)
            h = torch.cat([h[:, :1], patches], dim=1)   # (B, 1 + L, Dd)
        return super().decode_tokens(h)

    def forward(self, x, mask_ratio=None):
        """The forward pass and loss of pretraining on x (B, C, H, W) in [0, 1] (train.py does the backward
        pass and the update). -> (loss, out).

        In training mode out is empty (the loop logs the loss alone); in eval mode it holds images:
        recon:      the prediction in the hidden patches, the input's own pixels pasted back in the visible ones
        prediction: what the decoder predicts for every patch, the visible ones too (no loss on those)
        input:      what the encoder saw, hidden patches set to 0
        mask:       (B, 1, H, W), 1 = hidden
        mask_ratio, if given, replaces config.mask_ratio for this call (e.g. to show other ratios).
        """
        loss, pred, mask = super().forward(x, mask_ratio)
        return loss, ({} if self.training else self.pictures(x, pred, mask))

    @torch.no_grad()
    def pictures(self, x, pred, mask):
        """The decoder's patches (B, L, p*p*C) and the mask (B, L) as images (the dict of forward). With
        norm_pix_loss the decoder predicts normalised patches; to draw them, each is scaled back with its
        target patch's mean and std, so those pictures borrow two true numbers per patch."""
        p, C = self.config.patch_size, self.config.in_channels
        pixels = pred.float()                          # float32 pictures, whatever precision ran
        if self.config.norm_pix_loss:
            mean, std = self.patch_stats(x)
            pixels = pixels * std + mean
        pred_img = unpatchify(pixels, p, C).clamp(0, 1)  # (B, C, H, W)
        mask_px = unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * C), p, C)[:, :1]  # (B, 1, H, W)
        recon = x * (1 - mask_px) + pred_img * mask_px
        return {"recon": recon, "prediction": pred_img, "input": x * (1 - mask_px), "mask": mask_px}

    def encode_tokens(self, x):
        """In eval mode, all patches through the encoder: (B, C, H, W) -> (B, 1 + L, D), CLS first.

        In training mode (fine-tuning) two things change; in eval mode (features, probes, tests) neither:
        - block i skips its branches with probability config.drop_path * (i + 1) / depth, rising to
          drop_path in the last block;
        - with config.finetune_mask_ratio > 0, each image keeps only a random subset of its patches, as in
          pretraining: (B, 1 + len_keep, D). The step costs about as much less as tokens are dropped
          (half the patches: ~2x faster), and an image never shows its whole self twice, which fights
          memorising. Attention averages over whatever tokens come, so the test images' full set of
          patches needs no other weights.
        """
        tokens = self.embed(x)                         # (B, L, D), patches in order
        if self.training and self.config.finetune_mask_ratio > 0:
            tokens, _, _ = random_masking(tokens, self.config.finetune_mask_ratio)  # (B, len_keep, D)
        h = self.with_cls(tokens)                      # (B, 1 + L, D), or (B, 1 + len_keep, D)
        for i, block in enumerate(self.blocks):
            h = block(h, drop_path=self.config.drop_path * (i + 1) / len(self.blocks))
        return self.norm(h)

    def pool(self, h):
        """(B, 1 + L, D) encoder output -> (B, D): pool='cls', the CLS token after the final norm;
        pool='mean', the mean of the patch tokens."""
        return h[:, 0] if self.config.pool == "cls" else h[:, 1:].mean(dim=1)

    def encode(self, x):
        """Features of the clean image (in eval mode nothing is masked or dropped): (B, C, H, W) -> (B, embed_dim)."""
        return self.pool(self.encode_tokens(x))

    @torch.no_grad()
    def attention_maps(self, x, mask_ratio=0.0):
        """How much the CLS token attends to each patch in the last encoder block, per head:
        (B, C, H, W) -> weights (B, heads, L), mask (B, L) with 1 = hidden, patches in patchify order.

        The encoder sees the patches random_masking keeps at mask_ratio (0: every patch). The CLS's softmax
        row also gives some weight to the CLS itself; that share is dropped and the rest renormalised, so
        each head's weights over the patches it saw sum to 1, and a hidden patch's weight is 0.
        """
        tokens, mask, ids_restore = random_masking(self.embed(x), mask_ratio)  # (B, len_keep, D)
        h = self.with_cls(tokens)                      # (B, 1 + len_keep, D)
        for block in self.blocks[:-1]:
            h = block(h)
        last = self.blocks[-1]
        _, attn = last.attn(last.norm1(h), return_attention=True)  # (B, heads, 1 + len_keep, 1 + len_keep)
        seen = attn[:, :, 0, 1:].float()               # (B, heads, len_keep): CLS's row, patch columns
        seen = seen / seen.sum(dim=-1, keepdim=True)
        # the hidden patches' weight is 0: the same restore as the decoder's mask tokens, per head
        B, heads, len_keep = seen.shape
        weights = add_mask_tokens(seen.reshape(B * heads, len_keep, 1), seen.new_zeros(1, 1, 1),
                                  ids_restore.repeat_interleave(heads, dim=0))  # (B * heads, L, 1)
        return weights.view(B, heads, -1), mask
