"""
AE: the plain autoencoder, and the building blocks the DAE, VAE and MCAE reuse.

Three architectures:
- mlp:  flatten -> Linear/LayerNorm/ReLU stack -> latent vector -> mirrored stack -> sigmoid (the
        masking tutorial and the MLP denoising report: 784-256-64, 784-512-256-z, 784-656-512-256-128-z)
- linear: flatten -> one Linear to the latent vector -> one Linear back, nothing in between: trained on
        the squared error it finds the subspace of PCA with as many components (Baldi & Hornik 1989),
        the masking tutorial's "a linear autoencoder behaves like PCA"
- conv: stride-2 Conv2d/BatchNorm/ReLU stack -> latent feature map (C x h x w) -> mirrored
        ConvTranspose2d stack -> sigmoid (the DAE-vs-MAE study, the CIFAR-10 assignment). With 4x4
        kernels, stride 2, padding 1, three layers take 28x28 to 3x3 and 32x32 to 4x4, so the DAE-vs-MAE
        study's 8x3x3 (MNIST) and 48x4x4 (CIFAR-10) latents are `--conv-channels 16,32,64 --latent-channels 8`
        and `--latent-channels 48`.

The AE's forward is written once, around one hook: `corrupt(x)` says what the encoder sees. The AE
shows it the clean image; the DAE (dae.py) adds noise; the MCAE (mcae.py) hides pixels.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class AEConfig:
    in_channels: int = 1            # image channels: 1 for (Fashion-)MNIST, 3 for CIFAR-10
    image_size: int = 28            # image height = width: 28 or 32
    arch: str = "conv"              # 'mlp' (fully connected), 'conv' (convolutional) or 'linear' (PCA's equal)
    hidden: tuple = (512, 256)      # mlp: hidden layer widths from the input towards the latent
    latent_dim: int = 100           # mlp: size of the latent vector
    channels: tuple = (32, 64, 128) # conv: output channels of each stride-2 conv (each halves H, W)
    latent_channels: int = 32       # conv: channels of the latent feature map (C of C x h x w)
    l1: float = 0.0                 # weight of the L1 penalty on the latent code (sparsity, MLP denoising report)


# -----------------------------------------------------------------------------
# building blocks


def mlp(sizes, last_activation=None):
    """Linear layers of the given widths with LayerNorm and ReLU between them, `last_activation` after
    the last. The norm keeps each hidden layer's inputs centred and scaled: without it, the first large
    Adam steps can push a whole layer's pre-activations below zero, and a ReLU that outputs 0 for every
    image gets no gradient and never recovers (a "dead" layer)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(n_out), nn.ReLU()]
    if last_activation is not None:
        layers.append(last_activation)
    return nn.Sequential(*layers)


def norm2d(channels):
    """BatchNorm: each channel normalised over the batch and the pixels, then scaled and shifted by
    learned weights. It does for the conv layers what LayerNorm does in mlp() (no dead layers). In
    evaluation it uses running averages of the statistics, here updated with momentum 0.3 instead of
    torch's 0.1: 1000 images at batch 64 are 16 steps an epoch, after which a 0.1 average still holds
    18% of its initial guess (mean 0, variance 1), and the first evaluation would see a nearly constant
    output."""
    return nn.BatchNorm2d(channels, momentum=0.3)


def conv_sizes(image_size, n_layers):
    """Spatial size after each 4x4/stride-2/padding-1 conv: n -> floor(n / 2), e.g. 28 -> 14 -> 7 -> 3."""
    sizes = [image_size]
    for _ in range(n_layers):
        sizes.append((sizes[-1] + 2 - 4) // 2 + 1)
    return sizes


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, latent_channels, h, w): stride-2 convs, then a 3x3 conv to the latent."""

    def __init__(self, in_channels, channels, latent_channels):
        super().__init__()
        layers, prev = [], in_channels
        for c in channels:
            layers += [nn.Conv2d(prev, c, 4, stride=2, padding=1), norm2d(c), nn.ReLU()]
            prev = c
        layers.append(nn.Conv2d(prev, latent_channels, 3, padding=1))  # linear bottleneck
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, latent_channels, h, w) -> (B, C, H, W) in [0, 1]: the encoder mirrored with ConvTranspose2d."""

    def __init__(self, out_channels, channels, latent_channels, image_size):
        super().__init__()
        sizes = conv_sizes(image_size, len(channels))  # e.g. [28, 14, 7, 3]
        widths = list(channels[::-1]) + [out_channels]  # e.g. [128, 64, 32, 1]
        layers = [nn.Conv2d(latent_channels, widths[0], 3, padding=1), norm2d(widths[0]), nn.ReLU()]
        for i in range(len(channels)):
            n_in, n_out = sizes[-1 - i], sizes[-2 - i]
            # a stride-2 transpose conv gives 2n; output_padding adds the row the encoder floored away
            layers.append(nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1,
                                             output_padding=n_out - 2 * n_in))
            if i < len(channels) - 1:
                layers += [norm2d(widths[i + 1]), nn.ReLU()]
            else:
                layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


def start_output_at_mean(decoder, mean_image):
    """Set the bias of the decoder's last layer so that, before any training, it outputs the data's
    mean image: (C, H, W) in [0, 1], per pixel for an MLP decoder, per channel for a conv one. A decoder
    without a sigmoid (the linear one) takes the mean itself.

    Why: the untrained decoder outputs sigmoid(0) = 0.5 everywhere, while MNIST's mean pixel is 0.12. The first
    steps then push every pre-sigmoid value down at once and overshoot far below zero, where the sigmoid
    is flat: under MSE its gradient there, sigmoid' = s(1 - s), is ~0, so the output can stay black for
    good. Starting at the mean removes that first big push ("init well", Karpathy's recipe for training
    neural networks).
    """
    last = [m for m in decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))][-1]
    mean = mean_image.flatten() if isinstance(last, nn.Linear) else mean_image.mean(dim=(1, 2))  # (C*H*W,) or (C,)
    if any(isinstance(m, nn.Sigmoid) for m in decoder.modules()):
        mean = torch.logit(mean.clamp(0.01, 0.99))  # logit(0) = -inf: an always black pixel starts almost black
    with torch.no_grad():
        last.bias.copy_(mean.to(last.bias))


# -----------------------------------------------------------------------------
# the autoencoder


class AE(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        C, S = config.in_channels, config.image_size
        if config.arch == "mlp":
            sizes = [C * S * S, *config.hidden, config.latent_dim]
            self.encoder = nn.Sequential(nn.Flatten(), mlp(sizes))
            self.decoder = nn.Sequential(mlp(sizes[::-1], nn.Sigmoid()), nn.Unflatten(1, (C, S, S)))
            self.latent_shape = (config.latent_dim,)
        elif config.arch == "linear":
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(C * S * S, config.latent_dim))
            self.decoder = nn.Sequential(nn.Linear(config.latent_dim, C * S * S), nn.Unflatten(1, (C, S, S)))
            self.latent_shape = (config.latent_dim,)
        elif config.arch == "conv":
            self.encoder = ConvEncoder(C, config.channels, config.latent_channels)
            self.decoder = ConvDecoder(C, config.channels, config.latent_channels, S)
            h = conv_sizes(S, len(config.channels))[-1]
            self.latent_shape = (config.latent_channels, h, h)
        else:
            raise ValueError(f"unknown arch {config.arch!r}: use 'mlp', 'conv' or 'linear'")

    def init_output_bias(self, mean_image):
        """Start the decoder at the training set's mean image (see start_output_at_mean)."""
        start_output_at_mean(self.decoder, mean_image)

    def corrupt(self, x):
        """What the encoder sees, and the mask of hidden pixels (None: nothing hidden). AE: x itself."""
        return x, None

    def encode(self, x):
        """Latent code of the clean input, flattened: (B, C, H, W) -> (B, D)."""
        return self.encoder(x).flatten(1)

    def decode(self, z):
        """(B, D) latent codes -> (B, C, H, W) images in [0, 1]."""
        return self.decoder(z.view(-1, *self.latent_shape))

    def reconstruction_loss(self, recon, x, mask):
        """Mean squared error per pixel; subclasses may restrict it to the hidden pixels."""
        return F.mse_loss(recon, x)

    def forward(self, x):
        inp, mask = self.corrupt(x)
        z = self.encoder(inp)
        recon = self.decoder(z)
        recon_loss = self.reconstruction_loss(recon, x, mask)
        # L1 on the code pushes most latent units to zero for any one image (the MLP denoising report's
        # sparsity penalty)
        l1_loss = z.abs().mean()
        loss = recon_loss + self.config.l1 * l1_loss
        # a linear decoder has no sigmoid: its pictures are clipped to [0, 1], its loss is not (least
        # squares, as PCA)
        out = {"recon": recon.clamp(0, 1), "input": inp}
        if self.config.l1 > 0:  # two terms: report each (train.py logs every scalar in out)
            out.update(recon_loss=recon_loss.detach(), l1_penalty=l1_loss.detach())
        if mask is not None:
            out["mask"] = mask
        return loss, out
