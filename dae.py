"""
DAE: the denoising autoencoder (Vincent et al., 2008). The encoder sees the image with Gaussian noise
added, clipped back to [0, 1]; the loss compares the reconstruction with the clean image, so the
network must learn what an image looks like rather than copy its input.

Noise is given as a standard deviation. The studies speak of variance too: variance 0.1 (the CIFAR-10
assignment, the MLP denoising report) is std 0.316, variance 0.01 is std 0.1; the DAE-vs-MAE study's
"noise factor 0.5" is std 0.5.
"""
from dataclasses import dataclass

import torch

from ae import AE, AEConfig


@dataclass
class DAEConfig(AEConfig):
    noise_std: float = 0.316        # std of the Gaussian noise added to the input (variance 0.1)


class DAE(AE):

    def corrupt(self, x):
        noisy = x + self.config.noise_std * torch.randn_like(x)
        return noisy.clamp(0, 1), None  # clip: the noisy input is still an image in [0, 1]
