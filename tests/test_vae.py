"""VAE: the KL term, the loss, sampling, shapes. CPU, a few seconds."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vae import VAE, VAEConfig, gaussian_kl, vae_loss  # noqa: E402

SHAPES = [(1, 28), (3, 32)]
ARCHS = ["mlp", "conv"]


def small_config(arch="conv", in_channels=1, image_size=28, **kw):
    return VAEConfig(in_channels=in_channels, image_size=image_size, arch=arch, hidden=(64, 32),
                     channels=(8, 16, 32), latent_channels=8, latent_dim=6, **kw)


def batch(n=8, in_channels=1, image_size=28):
    return torch.rand(n, in_channels, image_size, image_size)


# -----------------------------------------------------------------------------
# the KL term


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu = torch.randn(4, 5)
    logvar = torch.randn(4, 5).clamp(-2, 2)
    closed = gaussian_kl(mu, logvar).sum(1)  # (4,)

    # KL(q || p) = E_q[log q(z) - log p(z)], estimated from draws of z ~ q
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))  # (S, 4, 5)
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # (4,)

    assert torch.allclose(monte_carlo, closed, rtol=0.03, atol=0.02), (monte_carlo, closed)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 4)
    assert torch.equal(gaussian_kl(zeros, zeros), zeros)
    assert (gaussian_kl(torch.randn(3, 4) + 0.5, torch.randn(3, 4)) > 0).all()


# -----------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("recon_loss", ["bce", "mse"])
def test_beta_zero_gives_exactly_the_reconstruction_loss(recon_loss):
    torch.manual_seed(0)
    model = VAE(small_config(beta=0.0, recon_loss=recon_loss))
    x = batch()
    loss, out = model(x)  # training mode: the reconstruction of a sampled z
    assert out["kl"] > 0  # the KL is there, it just has no weight
    assert torch.equal(loss, out["recon_loss"])
    if recon_loss == "bce":
        expected = F.binary_cross_entropy(out["recon"], x, reduction="sum") / len(x)
    else:
        expected = F.mse_loss(out["recon"], x, reduction="sum") / len(x)
    assert torch.allclose(loss, expected)


def test_loss_is_recon_plus_weighted_kl_per_image():
    torch.manual_seed(0)
    model = VAE(small_config(beta=2.5))
    x = batch()
    loss, out = model(x)
    assert torch.allclose(loss, out["recon_loss"] + 2.5 * out["kl"])
    # summed over pixels, averaged over images: a batch of copies costs what one image costs
    model.eval()
    one, _ = model(x[:1])
    copies, _ = model(x[:1].repeat(5, 1, 1, 1))
    assert torch.allclose(one, copies, rtol=1e-5)


def test_training_samples_z_and_eval_uses_the_mean():
    torch.manual_seed(0)
    model = VAE(small_config())
    x = batch()
    _, a = model(x)
    _, b = model(x)
    assert not torch.equal(a["recon"], b["recon"])  # two draws of z
    model.eval()
    _, a = model(x)
    _, b = model(x)
    assert torch.equal(a["recon"], b["recon"])
    assert torch.allclose(a["recon"], model.decode(a["mu"]))


def test_encode_returns_the_mean():
    torch.manual_seed(0)
    model = VAE(small_config())
    x = batch()
    assert torch.equal(model.encode(x), model.encode(x))  # deterministic in training mode too
    model.eval()
    _, out = model(x)
    assert torch.equal(model.encode(x), out["mu"])


def test_out_keys_and_detached_logs():
    model = VAE(small_config())
    x = batch()
    loss, out = model(x)
    assert {"recon", "input", "kl", "recon_loss", "mu", "logvar"} <= set(out)
    assert out["input"] is x
    assert out["kl"].dim() == 0 and not out["kl"].requires_grad
    assert out["recon_loss"].dim() == 0 and not out["recon_loss"].requires_grad
    loss.backward()


def test_vae_loss_is_the_negative_elbo_written_out():
    """vae_loss on its own, as a homework script calls it: -log p(x|z) summed over pixels plus beta times
    the closed-form KL summed over latent dimensions, both averaged over images."""
    g = torch.Generator().manual_seed(0)
    x, recon = torch.rand(4, 1, 5, 5, generator=g), torch.rand(4, 1, 5, 5, generator=g).clamp(0.01, 0.99)
    mu, logvar = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    loss, reconstruction, kl = vae_loss(recon, x, mu, logvar, beta=0.5)
    bce = -(x * recon.log() + (1 - x) * (1 - recon).log()).sum() / 4
    kl_by_hand = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum() / 4
    assert torch.allclose(reconstruction, bce) and torch.allclose(kl, kl_by_hand)
    assert torch.allclose(loss, bce + 0.5 * kl_by_hand)
    _, squared, _ = vae_loss(recon, x, mu, logvar, recon_loss="mse")
    assert torch.allclose(squared, (recon - x).pow(2).sum() / 4)
    with pytest.raises(ValueError, match="unknown recon_loss"):
        vae_loss(recon, x, mu, logvar, recon_loss="l1")


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError):
        VAE(small_config(recon_loss="l1"))
    with pytest.raises(ValueError):
        VAE(small_config(arch="vit"))


# -----------------------------------------------------------------------------
# shapes, decoding, sampling


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels,image_size", SHAPES)
def test_shapes(arch, in_channels, image_size):
    torch.manual_seed(0)
    model = VAE(small_config(arch, in_channels, image_size))
    D = model.config.latent_dim
    x = batch(5, in_channels, image_size)
    loss, out = model(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert out["recon"].shape == x.shape
    assert out["mu"].shape == out["logvar"].shape == (5, D)
    assert model.encode(x).shape == (5, D)
    assert model.decode(torch.randn(3, D)).shape == (3, in_channels, image_size, image_size)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels,image_size", SHAPES)
def test_samples_are_images(arch, in_channels, image_size):
    torch.manual_seed(0)
    model = VAE(small_config(arch, in_channels, image_size))
    images = model.sample(7)
    assert images.shape == (7, in_channels, image_size, image_size)
    assert images.min() >= 0 and images.max() <= 1
    assert not images.requires_grad


def test_default_config_builds():
    for arch in ARCHS:
        for in_channels, image_size in SHAPES:
            config = VAEConfig(in_channels=in_channels, image_size=image_size, arch=arch)
            model = VAE(config)
            assert model.encode(batch(2, in_channels, image_size)).shape == (2, config.latent_dim)
