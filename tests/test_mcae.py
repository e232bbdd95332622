"""MCAE: the masks (ratio, blocks, per image), the two losses, mask_ratio 0, and filling real images."""

import pytest
import torch
import torch.nn.functional as F

from ae import AE, AEConfig
from conftest import fashion_mnist_images, needs_fashion_mnist
from mcae import MCAE, MCAEConfig, random_mask
from metrics import hidden_psnr



def small_config(in_channels=1, image_size=28, **kw):
    return MCAEConfig(in_channels=in_channels, image_size=image_size, channels=(8, 16, 32),
                      latent_channels=8, **kw)


# -----------------------------------------------------------------------------
# the masks


@pytest.mark.parametrize("image_size", [28, 32])
@pytest.mark.parametrize("mask_type,block_size", [("pixel", 1), ("block", 8), ("block", 4)])
@pytest.mark.parametrize("mask_ratio", [0.1, 0.3, 0.5])
def test_mask_ratio_is_the_asked_one(image_size, mask_type, block_size, mask_ratio):
    torch.manual_seed(0)
    model = MCAE(small_config(image_size=image_size, mask_type=mask_type, block_size=block_size,
                              mask_ratio=mask_ratio))
    # a training batch: within 2 percentage points
    mask = model.draw_mask(torch.rand(128, 1, image_size, image_size))
    assert mask.shape == (128, 1, image_size, image_size)
    assert abs(mask.mean().item() - mask_ratio) <= 0.02
    # many images: within 2% of the ratio itself (no bias from rounding or from cropped border blocks)
    many = 4096 if mask_type == "block" else 512  # pixel masks are within one pixel per image anyway
    mask = model.draw_mask(torch.rand(many, 1, image_size, image_size))
    assert abs(mask.mean().item() - mask_ratio) <= 0.02 * mask_ratio
    # and every image within one block of it
    per_image = mask.flatten(1).mean(1)
    assert (per_image - mask_ratio).abs().max() <= block_size ** 2 / image_size ** 2


@pytest.mark.parametrize("image_size,block_size", [(28, 8), (32, 8), (28, 4), (28, 5)])
def test_block_masks_are_whole_blocks(image_size, block_size):
    torch.manual_seed(0)
    mask = random_mask(64, image_size, image_size, block_size, 0.5)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # one value per cell of the grid: the top-left pixel of each cell, spread over the cell, is the mask
    cells = mask[:, :, ::block_size, ::block_size]
    spread = cells.repeat_interleave(block_size, 2).repeat_interleave(block_size, 3)
    assert torch.equal(spread[:, :, :image_size, :image_size], mask)


@pytest.mark.parametrize("mask_type", ["pixel", "block"])
def test_each_image_gets_its_own_mask(mask_type):
    torch.manual_seed(0)
    model = MCAE(small_config(mask_type=mask_type))
    mask = model.draw_mask(torch.rand(32, 1, 28, 28))
    assert not torch.equal(mask[0], mask[1])
    assert len(torch.unique(mask.flatten(1), dim=0)) >= 28  # nearly all different


@pytest.mark.parametrize("mask_type", ["pixel", "block"])
def test_masked_input_is_zero_where_hidden_and_x_elsewhere(mask_type):
    torch.manual_seed(0)
    model = MCAE(small_config(in_channels=3, image_size=32, mask_type=mask_type))
    x = torch.rand(4, 3, 32, 32) + 0.01  # no zeros of its own
    loss, out = model(x)
    inp, mask = out["input"], out["mask"]
    assert mask.shape == (4, 1, 32, 32)
    hidden = mask.expand_as(x).bool()
    assert (inp[hidden] == 0).all()
    assert torch.equal(inp[~hidden], x[~hidden])


def test_masks_are_drawn_in_eval_mode():
    torch.manual_seed(0)
    model = MCAE(small_config()).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        _, a = model(x)
        _, b = model(x)
    assert a["mask"].mean() > 0.4
    assert not torch.equal(a["mask"], b["mask"])  # fresh masks: the caller fixes the seed to repeat


# -----------------------------------------------------------------------------
# the losses


def test_masked_loss_ignores_visible_pixels():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    mask = random_mask(4, 32, 32, 8, 0.5)
    visible = (mask == 0).expand_as(x)

    model = MCAE(small_config(in_channels=3, image_size=32, loss_on="masked"))
    recon = torch.rand_like(x, requires_grad=True)
    loss = model.reconstruction_loss(recon, x, mask)
    loss.backward()
    assert (recon.grad[visible] == 0).all()
    assert (recon.grad[~visible] != 0).all()
    # the mean over hidden values: sum of squared errors / (hidden pixels x channels)
    expected = (recon - x).pow(2)[~visible].mean()
    assert torch.allclose(loss, expected)

    model = MCAE(small_config(in_channels=3, image_size=32, loss_on="all"))
    recon = torch.rand_like(x, requires_grad=True)
    model.reconstruction_loss(recon, x, mask).backward()
    assert (recon.grad[visible] != 0).any()


def test_masked_loss_with_nothing_hidden_is_zero_not_nan():
    model = MCAE(small_config(loss_on="masked", mask_ratio=0.0))
    loss, _ = model(torch.rand(2, 1, 28, 28))
    assert loss.item() == 0.0


def test_mask_ratio_zero_is_the_plain_ae():
    torch.manual_seed(0)
    config = small_config(mask_ratio=0.0)
    model = MCAE(config)
    ae = AE(AEConfig(in_channels=1, image_size=28, channels=(8, 16, 32), latent_channels=8))
    ae.load_state_dict(model.state_dict())
    x = torch.rand(4, 1, 28, 28)
    loss, out = model(x)
    assert torch.equal(out["input"], x)
    assert (out["mask"] == 0).all()
    assert torch.allclose(loss, F.mse_loss(out["recon"], x))
    ae_loss, _ = ae(x)
    assert torch.allclose(loss, ae_loss)


def test_encode_and_decode_see_the_clean_image():
    torch.manual_seed(0)
    model = MCAE(small_config())
    x = torch.rand(3, 1, 28, 28)
    z = model.encode(x)
    assert torch.equal(z, model.encode(x))  # no mask drawn
    assert model.decode(z).shape == x.shape


def test_hidden_psnr():
    x = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :4] = 1  # image 0: top half hidden; image 1: nothing hidden
    recon = x.clone()
    recon[0, :, :4] += 0.1  # error 0.1 on every hidden value -> MSE 0.01 -> 20 dB
    recon[0, :, 4:] += 0.5  # errors on visible pixels do not count
    psnr = hidden_psnr(recon, x, mask)
    assert psnr.shape == (2,)
    assert abs(psnr[0].item() - 20.0) < 1e-3
    assert torch.isnan(psnr[1])


def test_unknown_settings_are_refused():
    for bad in [dict(mask_type="patch"), dict(loss_on="visible"), dict(mask_ratio=1.5)]:
        with pytest.raises(ValueError):
            MCAE(small_config(**bad))


# -----------------------------------------------------------------------------
# real images: the MCAE learns to fill blocks from context


@needs_fashion_mnist
def test_fills_hidden_blocks_better_than_the_mean_visible_value():
    torch.manual_seed(0)
    images = fashion_mnist_images("train", 21_000)
    train, held_out = images[:20_000], images[20_000:]

    model = MCAE(MCAEConfig(in_channels=1, image_size=28, channels=(16, 32, 64), latent_channels=16,
                            mask_type="block", mask_ratio=0.5, block_size=8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(300):
        idx = torch.randint(len(train), (128,))
        loss, _ = model(train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    with torch.no_grad():
        _, out = model(held_out)
    mask = out["mask"]
    visible = 1 - mask
    # baseline: each hidden pixel gets the mean of the image's visible pixels
    mean_visible = (held_out * visible).flatten(1).sum(1) / visible.flatten(1).sum(1).clamp(min=1)
    baseline = held_out * visible + mean_visible.view(-1, 1, 1, 1) * mask
    model_psnr = hidden_psnr(out["recon"], held_out, mask).nanmean()
    baseline_psnr = hidden_psnr(baseline, held_out, mask).nanmean()
    print(f"hidden-pixel PSNR: MCAE {model_psnr:.2f} dB, mean visible value {baseline_psnr:.2f} dB")
    assert model_psnr > baseline_psnr + 1.0, (model_psnr, baseline_psnr)
