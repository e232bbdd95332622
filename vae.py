"""
VAE: the variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014), as
in the CIFAR-10 assignment: a Gaussian latent, the reparameterization trick, a KL term, and sampling
from the prior.

The encoder gives, for each image, a Gaussian q(z|x) = N(mu, diag(exp(logvar))) over a latent vector of
latent_dim numbers; the decoder maps a draw of z back to an image. The loss is the negative ELBO:

    loss = reconstruction loss + beta * KL(q(z|x) || N(0, I))

written out in `vae_loss`, the piece to copy (with `gaussian_kl`); beta = 1 is the plain VAE, other values the beta-VAE
(Higgins et al., 2017).

Both architectures of ae.py, built from its blocks:
- mlp:  flatten -> Linear/ReLU stack to hidden[-1] -> two Linear heads, mu and logvar (latent_dim each);
        decoder: the stack mirrored from latent_dim -> sigmoid.
- conv: ConvEncoder -> feature map (latent_channels x h x w) -> flatten -> two Linear heads;
        decoder: Linear -> feature map -> ConvDecoder -> sigmoid.
The latent is a vector of latent_dim numbers for both, so it can be sampled, interpolated and added.
AEConfig's `l1` (a sparsity penalty on a deterministic code) is not used by the VAE.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ae import AEConfig, ConvDecoder, ConvEncoder, conv_sizes, mlp, start_output_at_mean


@dataclass
class VAEConfig(AEConfig):
    latent_dim: int = 32            # size of the latent vector z (both archs)
    beta: float = 1.0               # weight of the KL term (1: the plain VAE; 0: an AE on sampled codes)
    recon_loss: str = "bce"         # 'bce' (Bernoulli decoder) or 'mse' (Gaussian decoder, variance 1/2)


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each latent dimension, in nats: (B, D), (B, D) -> (B, D).

    Closed form for two Gaussians (Kingma & Welling 2014, Appendix B):
        -KL = 0.5 * sum_j (1 + log s_j^2 - mu_j^2 - s_j^2)
    returned per dimension, not summed, so callers can count the dimensions in use.
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def vae_loss(recon, x, mu, logvar, beta=1.0, recon_loss="bce"):
    """The negative ELBO per image: -> (loss, reconstruction term, KL term), scalars in nats per image.

        loss = -log p(x|z) + beta * KL(q(z|x) || N(0, I))

    recon, x: (B, C, H, W) in [0, 1]; mu, logvar: (B, D), the parameters of q(z|x).
    Both terms are summed over pixels (and over latent dimensions for the KL) and averaged over the
    batch, so they are per-image log-likelihoods and weigh against each other as the ELBO says; a
    per-pixel mean would shrink the reconstruction term by C*H*W and let the KL term win, which
    collapses q(z|x) onto the prior. Copy with: gaussian_kl.
    """
    B = x.shape[0]
    recon, x = recon.float(), x.float()  # logs of bf16 values near 0 or 1 are too coarse for a loss
    if recon_loss == "bce":
        # -log p(x|z) for a Bernoulli decoder whose means are the recon pixels (pytorch/examples vae/main.py),
        # the binary cross-entropy written out; the clamp keeps log(0) of a saturated pixel finite. Grey
        # levels in (0, 1) are soft targets, so its minimum is the entropy of x rather than 0.
        p = recon.clamp(1e-7, 1 - 1e-7)
        reconstruction = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum() / B
    elif recon_loss == "mse":
        # -log p(x|z) for a Gaussian decoder with variance 1/2, up to a constant. It is much smaller than
        # the BCE for the same images, so the KL weighs more: use a smaller beta with it.
        reconstruction = F.mse_loss(recon, x, reduction="sum") / B
    else:
        raise ValueError(f"unknown recon_loss {recon_loss!r}: use 'bce' or 'mse'")
    kl = gaussian_kl(mu, logvar).sum(1).mean()
    return reconstruction + beta * kl, reconstruction, kl


class VAE(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        if config.recon_loss not in ("bce", "mse"):
            raise ValueError(f"unknown recon_loss {config.recon_loss!r}: use 'bce' or 'mse'")
        C, S, D = config.in_channels, config.image_size, config.latent_dim
        if config.arch == "mlp":
            # LayerNorm and ReLU after the last hidden layer too: the heads below are the bottleneck
            self.encoder = nn.Sequential(nn.Flatten(), mlp([C * S * S, *config.hidden]),
                                         nn.LayerNorm(config.hidden[-1]), nn.ReLU())
            n_features = config.hidden[-1]
            self.decoder = nn.Sequential(
                mlp([D, *config.hidden[::-1], C * S * S], nn.Sigmoid()),
                nn.Unflatten(1, (C, S, S)),  # (B, C*H*W) -> (B, C, H, W)
            )
        elif config.arch == "conv":
            h = conv_sizes(S, len(config.channels))[-1]
            feature_shape = (config.latent_channels, h, h)
            n_features = config.latent_channels * h * h
            self.encoder = nn.Sequential(
                ConvEncoder(C, config.channels, config.latent_channels),
                nn.Flatten(),  # (B, latent_channels, h, w) -> (B, latent_channels*h*w)
            )
            self.decoder = nn.Sequential(
                nn.Linear(D, n_features),
                nn.Unflatten(1, feature_shape),  # (B, latent_channels*h*w) -> (B, latent_channels, h, w)
                ConvDecoder(C, config.channels, config.latent_channels, S),
            )
        else:
            raise ValueError(f"unknown arch {config.arch!r}: use 'mlp' or 'conv'")
        self.to_mu = nn.Linear(n_features, D)
        # the log of the variance, so that any real output is a valid (positive) variance
        self.to_logvar = nn.Linear(n_features, D)

    # -------------------------------------------------------------------------
    # encoder, decoder, sampling

    def posterior(self, x):
        """q(z|x) for a batch: (B, C, H, W) -> mu (B, D), logvar (B, D)."""
        h = self.encoder(x)  # (B, n_features)
        return self.to_mu(h), self.to_logvar(h)

    def encode(self, x):
        """Features for probes, k-NN and t-SNE: the mean of q(z|x), (B, D). Deterministic in any mode."""
        return self.posterior(x)[0]

    def init_output_bias(self, mean_image):
        """Start the decoder at the training set's mean image (see ae.start_output_at_mean)."""
        start_output_at_mean(self.decoder, mean_image)

    def decode(self, z):
        """(B, D) latent vectors -> (B, C, H, W) images in [0, 1] (the decoder's mean image)."""
        return self.decoder(z)

    @torch.no_grad()
    def sample(self, n, device=None):
        """n new images: z from the prior N(0, I), decoded. -> (n, C, H, W) in [0, 1]."""
        if device is None:
            device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, device=device)
        return self.decode(z)

    # -------------------------------------------------------------------------
    # the forward pass: q(z|x), a draw of z, the decoded image, the loss

    def forward(self, x):
        mu, logvar = self.posterior(x)  # (B, D) each
        if self.training:
            # reparameterization: z = mu + s * eps with eps ~ N(0, I), so gradients reach mu and logvar
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            # evaluation decodes the mean: the same image gives the same reconstruction and test loss
            z = mu
        recon = self.decode(z)
        loss, recon_loss, kl = vae_loss(recon, x, mu, logvar, self.config.beta, self.config.recon_loss)
        out = {"recon": recon, "input": x, "kl": kl.detach(), "recon_loss": recon_loss.detach(),
               "mu": mu, "logvar": logvar}
        return loss, out
