"""Tests for mae.py: patches, masking, attention, positions, the loss, and that the MAE learns."""
import math

import numpy as np
import pytest
import torch

from conftest import fashion_mnist_images, needs_fashion_mnist
from mae import (MAE, drop_branch, Attention, Block, MAEConfig, patchify, random_masking,
                 sincos_pos_embed_2d, unpatchify)



def tiny_config(**kw):
    base = dict(patch_size=4, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=1,
                decoder_num_heads=4)
    base.update(kw)
    return MAEConfig(**base)


# -----------------------------------------------------------------------------
# patches


@pytest.mark.parametrize("C,S,p", [(1, 28, 4), (3, 32, 4), (1, 28, 7), (3, 32, 2), (3, 28, 14)])
def test_patchify_round_trip(C, S, p):
    imgs = torch.rand(2, C, S, S)
    patches = patchify(imgs, p)
    assert patches.shape == (2, (S // p) ** 2, p * p * C)
    assert torch.equal(unpatchify(patches, p, C), imgs)


@pytest.mark.parametrize("C", [1, 3])
def test_patch_holds_the_right_pixels(C):
    p, S = 4, 28
    g = S // p
    imgs = torch.rand(2, C, S, S)
    patches = patchify(imgs, p)
    for k in [0, 1, g, 2 * g + 5, g * g - 1]:  # first, second, first of row 2, some middle, last
        r, c = divmod(k, g)  # row-major order
        block = imgs[1, :, r * p:(r + 1) * p, c * p:(c + 1) * p]  # (C, p, p)
        assert torch.equal(patches[1, k], block.permute(1, 2, 0).reshape(-1))  # flattened as (p, p, C)


def test_patchify_rejects_a_patch_size_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide"):
        patchify(torch.rand(1, 1, 28, 28), 5)
    with pytest.raises(ValueError):
        MAE(MAEConfig(image_size=28, patch_size=3))


# -----------------------------------------------------------------------------
# masking


def test_random_masking_keeps_the_right_number_and_unshuffles():
    torch.manual_seed(0)
    B, L, D, ratio = 4, 49, 3, 0.75
    # token i of image b holds (b, i, i) so every token can be recognised after shuffling
    ids = torch.arange(L).float()
    x = torch.stack([torch.stack([torch.full((L,), float(b)), ids, ids], dim=-1) for b in range(B)])
    x_visible, mask, ids_restore = random_masking(x, ratio)
    len_keep = int(L * (1 - ratio))
    assert len_keep == 12
    assert x_visible.shape == (B, len_keep, D)
    assert mask.shape == (B, L) and ids_restore.shape == (B, L)
    assert torch.all(mask.sum(1) == L - len_keep)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    # the kept tokens are exactly the unmasked positions of the same image
    for b in range(B):
        kept = sorted(x_visible[b, :, 1].long().tolist())
        assert kept == torch.nonzero(mask[b] == 0).flatten().tolist()
        assert torch.all(x_visible[b, :, 0] == b)
    # each image draws its own mask
    assert not torch.equal(mask[0], mask[1])
    # appending placeholders and gathering with ids_restore puts every visible token back in place
    filler = torch.full((B, L - len_keep, D), -1.0)
    restored = torch.gather(torch.cat([x_visible, filler], 1), 1, ids_restore.unsqueeze(-1).expand(-1, -1, D))
    visible = (mask == 0).unsqueeze(-1)
    assert torch.equal(torch.where(visible, restored, x), x)
    assert torch.all(restored[~visible.expand_as(restored)] == -1)


@pytest.mark.parametrize("L,ratio", [(49, 0.5), (64, 0.75), (196, 0.9)])
def test_random_masking_len_keep(L, ratio):
    x_visible, mask, _ = random_masking(torch.rand(3, L, 8), ratio)
    assert x_visible.shape[1] == int(L * (1 - ratio))
    assert torch.all(mask.sum(1) == L - int(L * (1 - ratio)))


# -----------------------------------------------------------------------------
# attention


def test_attention_paths_agree():
    """The written-out path (the weights to look at) computes what the fused kernel does."""
    torch.manual_seed(0)
    attn = Attention(48, 6)
    x = torch.randn(3, 17, 48)
    fast = attn(x)
    slow, weights = attn(x, return_attention=True)
    assert weights.shape == (3, 6, 17, 17)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 6, 17), atol=1e-6)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_a_block_is_two_residual_branches_and_drop_path_acts_only_in_training():
    torch.manual_seed(0)
    block = Block(32, 4, mlp_ratio=2.0)
    x = torch.randn(2, 10, 32)
    h = x + block.attn(block.norm1(x))
    assert torch.allclose(block(x), h + block.mlp(block.norm2(h)), atol=1e-6)
    assert torch.equal(block.eval()(x, drop_path=0.9), block(x))  # eval: no stochastic depth
    kept = drop_branch(torch.ones(4000, 1, 1), 0.25, training=True)  # each image's branch: 0 or 1 / 0.75
    assert torch.allclose(kept.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (kept == 0).float().mean().item() == pytest.approx(0.25, abs=0.03)  # skipped with probability 0.25


def test_a_training_step_returns_the_loss_alone_and_evaluation_the_pictures():
    model = MAE(tiny_config())
    x = torch.rand(2, 1, 28, 28)
    assert model.train()(x)[1] == {}
    assert {"recon", "prediction", "input", "mask"} <= set(model.eval()(x)[1])


@pytest.mark.parametrize("C,S", [(1, 28), (3, 32)])
def test_attention_maps_are_distributions_over_the_patches_seen(C, S):
    torch.manual_seed(0)
    model = MAE(tiny_config(in_channels=C, image_size=S)).eval()
    L = (S // 4) ** 2
    weights, mask = model.attention_maps(torch.rand(2, C, S, S))
    assert weights.shape == (2, 4, L) and mask.shape == (2, L) and not mask.any()
    assert torch.all(weights >= 0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4), atol=1e-5)
    weights, mask = model.attention_maps(torch.rand(2, C, S, S), mask_ratio=0.75)
    assert (mask.sum(1) == L - int(L * 0.25)).all()
    assert (weights * mask[:, None]).abs().max() == 0  # a hidden patch was never seen: no attention
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4), atol=1e-5)


# -----------------------------------------------------------------------------
# positions


def test_sincos_pos_embed_matches_the_formula():
    D, g = 32, 7
    emb = sincos_pos_embed_2d(D, g, cls_token=True)
    assert emb.shape == (1 + g * g, D)
    assert torch.all(emb[0] == 0)  # the CLS token has no position
    assert sincos_pos_embed_2d(D, g, cls_token=False).shape == (g * g, D)
    quarter = D // 4  # frequencies per coordinate: each half is sin (quarter) then cos (quarter)
    for row, col in [(0, 0), (0, 1), (3, 5), (6, 2), (6, 6)]:
        expected = []
        for pos in (col, row):  # first half: column, second half: row
            omegas = [1.0 / 10000 ** (2 * i / (D // 2)) for i in range(quarter)]
            expected += [math.sin(pos * w) for w in omegas] + [math.cos(pos * w) for w in omegas]
        got = emb[1 + row * g + col]
        assert np.allclose(got.numpy(), np.array(expected), atol=1e-6), (row, col)


def test_positions_are_fixed_buffers():
    model = MAE(tiny_config())
    names = {n for n, _ in model.named_parameters()}
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    state = model.state_dict()
    assert state["pos_embed"].shape == (1, 50, 32)
    assert torch.equal(state["pos_embed"][0], sincos_pos_embed_2d(32, 7))


# -----------------------------------------------------------------------------
# the loss and the model contract


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_loss_ignores_visible_patches(norm_pix_loss):
    torch.manual_seed(0)
    model = MAE(tiny_config(norm_pix_loss=norm_pix_loss)).eval()  # eval: forward returns the pictures
    # the prediction layer starts at zero; predicting 0 for a normalised patch scores the same
    # whatever the patch holds, so give it weights that predict something
    torch.nn.init.normal_(model.decoder_pred.weight, std=0.1)
    x = torch.rand(4, 1, 28, 28)
    torch.manual_seed(1)
    loss, out = model(x)
    mask_px = out["mask"]  # (B, 1, H, W), 1 = hidden
    # the same seed draws the same mask, so the same predictions; from here on only the target changes
    torch.manual_seed(1)
    latent, mask, ids_restore = model.forward_encoder(x, model.config.mask_ratio)
    pred = model.forward_decoder(latent, ids_restore)
    assert torch.allclose(model.forward_loss(x, pred, mask), loss)

    noise = torch.rand_like(x)
    visible_changed = torch.where(mask_px.bool(), x, noise)
    hidden_changed = torch.where(mask_px.bool(), noise, x)
    assert torch.allclose(model.forward_loss(visible_changed, pred, mask), loss, atol=1e-7)
    assert not torch.allclose(model.forward_loss(hidden_changed, pred, mask), loss, atol=1e-4)

    # and no gradient reaches the predictions of visible patches
    pred = pred.detach().requires_grad_()
    model.forward_loss(x, pred, mask).backward()
    visible = mask == 0
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(-1) > 0)


def test_every_token_keeps_its_patch():
    # with no blocks and no decoder conv, each token's output depends on that token alone, so we can
    # follow every patch
    torch.manual_seed(0)
    model = MAE(tiny_config(depth=0, decoder_depth=0, decoder_conv=0))
    x = torch.rand(3, 1, 28, 28)
    latent, mask, ids_restore = model.forward_encoder(x, 0.75)
    pred = model.forward_decoder(latent, ids_restore)  # (B, L, 16)
    # every patch encoded in place, with its position built here rather than read from the model
    tokens = model.norm(model.patch_embed(patchify(x, 4)) + sincos_pos_embed_2d(32, 7, cls_token=False))
    pos = sincos_pos_embed_2d(32, 7)  # (1 + L, Dd), the decoder's
    assert torch.allclose(latent[:, 0], model.norm(model.cls_token[0, 0]).expand(3, -1), atol=1e-5)
    for b in range(3):
        for i in range(49):
            if mask[b, i] == 0:
                j = ids_restore[b, i]  # where patch i sits among the kept tokens
                assert torch.allclose(latent[b, 1 + j], tokens[b, i], atol=1e-5)
                h = model.decoder_embed(latent[b, 1 + j])
            else:
                h = model.mask_token[0, 0]
            expected = model.decoder_pred(model.decoder_norm(h + pos[1 + i]))
            assert torch.allclose(pred[b, i], expected, atol=1e-5), (b, i)


@pytest.mark.parametrize("C,S", [(1, 28), (3, 32)])
def test_hidden_pixels_reach_no_prediction(C, S):
    # the decoder conv mixes neighbouring tokens, but they hold only encoded visible patches and mask
    # tokens: changing the hidden pixels changes no prediction, changing a visible one changes its neighbours'
    torch.manual_seed(0)
    model = MAE(tiny_config(in_channels=C, image_size=S))
    torch.nn.init.normal_(model.decoder_pred.weight, std=0.1)  # it starts at zero: predictions would all be 0
    x = torch.rand(2, C, S, S)

    def predict(images):
        torch.manual_seed(1)                           # the same mask every time
        latent, mask, ids_restore = model.forward_encoder(images, 0.75)
        return model.forward_decoder(latent, ids_restore), mask

    pred, mask = predict(x)
    mask_px = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 16 * C), 4, C)
    noise = torch.rand_like(x)
    pred_hidden_changed, _ = predict(torch.where(mask_px.bool(), noise, x))
    assert torch.allclose(pred_hidden_changed, pred, atol=1e-6)
    pred_visible_changed, _ = predict(torch.where(mask_px.bool(), x, noise))
    assert not torch.allclose(pred_visible_changed[mask.bool()], pred[mask.bool()], atol=1e-4)


def test_decoder_conv_must_be_odd():
    with pytest.raises(ValueError, match="odd"):
        MAE(tiny_config(decoder_conv=2))
    assert MAE(tiny_config(decoder_conv=0)).decoder_conv is None


@pytest.mark.parametrize("C,S,norm_pix_loss", [(1, 28, False), (3, 32, False), (3, 32, True)])
def test_forward_contract(C, S, norm_pix_loss):
    torch.manual_seed(0)
    model = MAE(tiny_config(in_channels=C, image_size=S, norm_pix_loss=norm_pix_loss)).eval()
    x = torch.rand(3, C, S, S)
    loss, out = model(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    for key in ("recon", "prediction", "input"):
        assert out[key].shape == (3, C, S, S), key
        assert out[key].min() >= 0 and out[key].max() <= 1, key
    mask = out["mask"]
    assert mask.shape == (3, 1, S, S)
    L, kept = (S // 4) ** 2, 1 - model.config.mask_ratio
    assert torch.allclose(mask.mean((1, 2, 3)), torch.full((3,), (L - int(L * kept)) / L))
    assert torch.equal(out["recon"] * mask, out["prediction"] * mask)  # hidden: the prediction itself
    hidden = mask.bool().expand_as(x)
    # visible patches pasted back from the input; hidden ones are the prediction; input hides them
    assert torch.equal(out["recon"][~hidden], x[~hidden])
    assert not torch.equal(out["recon"][hidden], x[hidden])  # the prediction, not the input
    assert torch.all(out["input"][hidden] == 0)
    assert torch.equal(out["input"][~hidden], x[~hidden])
    loss.backward()
    assert model.patch_embed.weight.grad is not None and model.mask_token.grad is not None


def test_norm_pix_pictures_are_unnormalised():
    torch.manual_seed(0)
    model = MAE(tiny_config(norm_pix_loss=True)).eval()
    # a decoder that predicts 0 everywhere means "the patch mean": the picture must show that mean
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)
    x = torch.rand(2, 1, 28, 28) * 0.5 + 0.25
    _, out = model(x)
    patch_means = patchify(x, 4).mean(-1, keepdim=True).expand(-1, -1, 16)
    expected = unpatchify(patch_means, 4, 1)
    hidden = out["mask"].bool()
    assert torch.allclose(out["recon"][hidden], expected[hidden], atol=1e-6)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encode_sees_the_whole_image(pool):
    torch.manual_seed(0)
    model = MAE(tiny_config(pool=pool)).eval()
    x = torch.rand(5, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (5, 32)
    assert torch.equal(model.encode(x), z)  # nothing random: no masking
    tokens = model.encode_tokens(x)
    assert torch.allclose(z, tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(1))
    # every image on its own gives the same features: no mixing across the batch
    assert torch.allclose(model.encode(x[2:3]), z[2:3], atol=1e-5)


def test_finetune_mask_drops_patches_in_training_only():
    torch.manual_seed(0)
    model = MAE(tiny_config(finetune_mask_ratio=0.5, drop_path=0.0))
    seen = []
    model.blocks[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[1]))
    x = torch.rand(5, 1, 28, 28)
    model.train()
    a, b = model.encode(x), model.encode(x)
    assert seen == [1 + 24, 1 + 24]  # CLS + int(49 * 0.5) patches, a new draw each call
    assert not torch.allclose(a, b)
    model.eval()  # features, probes and test accuracy: every patch, the same weights
    z = model.encode(x)
    assert seen[-1] == 1 + 49
    unmasked = MAE(tiny_config(drop_path=0.0)).eval()
    unmasked.load_state_dict(model.state_dict())
    assert torch.allclose(z, unmasked.encode(x), atol=1e-6)
    # a masked image's features are the unmasked features of the patches it kept
    model.train()
    torch.manual_seed(1)
    kept = model.encode(x[:1])
    torch.manual_seed(1)
    tokens, _, _ = random_masking(model.embed(x[:1]), 0.5)
    h = model.with_cls(tokens)
    for block in model.blocks:
        h = block(h)
    assert torch.allclose(kept, model.norm(h)[:, 0], atol=1e-6)


def test_initialisation():
    torch.manual_seed(0)
    model = MAE(MAEConfig())
    qkv = model.blocks[0].attn.qkv.weight  # (3D, D): xavier uniform bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1]))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert torch.all(model.norm.weight == 1) and torch.all(model.norm.bias == 0)
    assert 0.015 < model.cls_token.std() < 0.025
    assert torch.all(model.decoder_pred.weight == 0)  # every patch is first predicted as 0


# -----------------------------------------------------------------------------
# learning




def test_overfits_one_batch():
    torch.manual_seed(0)
    model = MAE(tiny_config())
    # eight images, each a flat grey of its own level plus the same vertical stripes: the stripes are
    # where a patch is, the level can only come from the image's visible patches
    levels = torch.linspace(0.1, 0.9, 8).view(8, 1, 1, 1)
    stripes = 0.05 * torch.sin(torch.arange(28.0) / 2).view(1, 1, 1, 28)
    x = (levels + stripes).expand(8, 1, 28, 28).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(200):  # a new mask every step: it has to work from whichever patches it sees
        loss, _ = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])
    # on a fresh mask it beats the batch's mean image, which knows the stripes but not the levels
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(x, 0.75)
        loss = model.forward_loss(x, model.forward_decoder(latent, ids_restore), mask).item()
        mean_image = patchify(x.mean(0, keepdim=True), 4).expand(8, -1, -1)
        baseline = model.forward_loss(x, mean_image, mask).item()
    assert loss < 0.25 * baseline, (loss, baseline)


@needs_fashion_mnist
def test_pretraining_on_fashion_mnist_lowers_held_out_loss():
    torch.manual_seed(0)
    train = fashion_mnist_images("train", 4000)
    test = fashion_mnist_images("t10k", 500)
    model = MAE(tiny_config(embed_dim=64, decoder_embed_dim=64))
    # two guesses that need no model: the mean training pixel everywhere, and the mean training image
    constant = train.mean().expand(len(test), 49, 16)
    mean_image = patchify(train.mean(0, keepdim=True), 4).expand(len(test), -1, -1)

    def held_out_losses():
        """Masked-patch loss of the model, the constant and the mean image on the same test masks."""
        model.eval()
        with torch.no_grad():
            torch.manual_seed(7)
            latent, mask, ids_restore = model.forward_encoder(test, 0.75)
            pred = model.forward_decoder(latent, ids_restore)
            losses = [model.forward_loss(test, guess, mask).item() for guess in (pred, constant, mean_image)]
        model.train()
        return losses

    before, constant_loss, mean_image_loss = held_out_losses()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    for step in range(100):
        idx = torch.randint(0, len(train), (64,))
        loss, _ = model(train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_losses()[0]
    assert after < 0.5 * before, (before, after)
    # not just the right brightness: it beats both guesses (about 0.63x and 0.92x of their losses)
    assert after < 0.8 * constant_loss, (after, constant_loss)
    assert after < mean_image_loss, (after, mean_image_loss)
