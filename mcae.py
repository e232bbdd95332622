"""
MCAE: the masked convolutional autoencoder of the CIFAR-10 assignment, with the masking tutorial's two
kinds of masking. The encoder sees the image with some pixels set to 0; the decoder must give back the
whole image, so it has to fill the hidden part from what is left.

- pixel: pixels are hidden one at a time, anywhere (the tutorial's "random masking"): some neighbour is
         usually visible, so local interpolation fills the gap.
- block: square blocks of block_size x block_size pixels are hidden together (the tutorial's
         `block_mask`, patch=8): whole regions are gone and must be inferred from the rest of the image.
Either way each image has mask_ratio of its pixels hidden: to within one block per image, and exactly
on average over images (see random_mask). With mask_ratio 0 nothing is hidden and the MCAE is the
plain AE, so the tutorial's three levels of difficulty (identity, random pixels, blocks) are three runs
of this one model.

Unlike the tutorial's snippet, which draws one mask for the whole batch, each image gets its own mask, drawn
without a Python loop. Masks are drawn in evaluation too: what is evaluated is how well hidden pixels
are filled, so the caller fixes the random seed around evaluation to make it repeatable.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ae import AE, AEConfig


@dataclass
class MCAEConfig(AEConfig):
    mask_type: str = "block"        # 'pixel': single pixels hidden; 'block': square blocks hidden
    mask_ratio: float = 0.5         # fraction of each image's pixels hidden from the encoder (0: plain AE)
    block_size: int = 8             # block: side of a square block in pixels (the tutorial's patch=8)
    loss_on: str = "all"            # 'all': MSE over every pixel; 'masked': MSE over hidden pixels only


# -----------------------------------------------------------------------------
# masking


def random_mask(batch_size, height, width, block_size, mask_ratio, device=None):
    """A random mask per image, 1 = hidden: -> (B, 1, H, W) float.

    The image is cut into a grid of block_size x block_size cells; the last row and column of cells are
    cropped when block_size does not divide the image (28x28 with 8x8 blocks: cells of 64, 32 and 16
    pixels). Cells are hidden whole. block_size 1 hides single pixels.

    Which cells: as MAE's random masking, each image shuffles its cells by sorting random noise. Then
    cells are hidden in that order until mask_ratio * H * W pixels are hidden. The cell that straddles
    that target is hidden with probability (pixels still missing) / (its pixels), so the expected hidden
    count is exactly the target whatever the cell sizes, and each image is within one cell of it.
    Hiding a fixed number of cells instead would miss the target when ratio * n_cells is not a whole
    number (16 cells at ratio 0.1: 2 cells, 12.5%) and weigh the cropped border cells as whole ones.
    """
    b = block_size
    gh, gw = -(-height // b), -(-width // b)  # cells per column and row (ceil division)
    rows = torch.full((gh,), b, device=device)
    rows[-1] = height - b * (gh - 1)  # pixel rows of the last (possibly cropped) row of cells
    cols = torch.full((gw,), b, device=device)
    cols[-1] = width - b * (gw - 1)
    area = (rows[:, None] * cols[None, :]).flatten()  # (n_cells,) pixels in each cell, row-major
    target = mask_ratio * height * width  # pixels to hide per image, in expectation

    noise = torch.rand(batch_size, gh * gw, device=device)
    ids_shuffle = noise.argsort(dim=1)  # (B, n_cells): this image's order of cells
    area_shuffled = area[ids_shuffle]  # (B, n_cells)
    before = area_shuffled.cumsum(1) - area_shuffled  # pixels hidden by the cells ahead in the order
    # cells wholly before the target: before + u * area < target for any u in [0, 1); wholly after: never;
    # the straddling cell: when u < (target - before) / area
    u = torch.rand(batch_size, 1, device=device)
    hidden_shuffled = before + u * area_shuffled < target  # (B, n_cells)
    # back to grid order: the i-th shuffled verdict belongs to cell ids_shuffle[:, i]
    hidden = torch.empty_like(hidden_shuffled).scatter_(1, ids_shuffle, hidden_shuffled)  # (B, n_cells)

    mask = hidden.float().view(batch_size, 1, gh, gw)  # (B, 1, gh, gw)
    mask = mask.repeat_interleave(b, dim=2).repeat_interleave(b, dim=3)  # (B, 1, gh*b, gw*b)
    return mask[:, :, :height, :width]  # (B, 1, H, W): crop the border cells


# -----------------------------------------------------------------------------
# the masked autoencoder


class MCAE(AE):

    def __init__(self, config):
        super().__init__(config)
        if config.mask_type not in ("pixel", "block"):
            raise ValueError(f"unknown mask_type {config.mask_type!r}: use 'pixel' or 'block'")
        if config.loss_on not in ("all", "masked"):
            raise ValueError(f"unknown loss_on {config.loss_on!r}: use 'all' or 'masked'")
        if not 0.0 <= config.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {config.mask_ratio}")

    def draw_mask(self, x):
        """A fresh random mask for each image of x: (B, C, H, W) -> (B, 1, H, W), 1 = hidden."""
        B, _, H, W = x.shape
        block = self.config.block_size if self.config.mask_type == "block" else 1
        return random_mask(B, H, W, block, self.config.mask_ratio, x.device).to(x.dtype)

    def corrupt(self, x):
        # drawn in eval mode too: evaluation scores how well the hidden pixels are filled
        mask = self.draw_mask(x)
        return x * (1 - mask), mask  # hidden pixels are 0 in every channel

    def reconstruction_loss(self, recon, x, mask):
        if self.config.loss_on == "all":
            return F.mse_loss(recon, x)
        # 'masked' (as MAE): mean squared error over the hidden pixels only, so copying the visible
        # pixels earns nothing. The (B, 1, H, W) mask covers every channel: C values per hidden pixel.
        n_values = mask.sum() * x.shape[1]
        squared_error = ((recon - x).pow(2) * mask).sum()
        return squared_error / n_values.clamp(min=1)  # nothing hidden: loss 0, not 0 / 0
