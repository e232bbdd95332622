#!/usr/bin/env bash
# The CIFAR-10 assignment: a conv AE, a DAE (Gaussian noise of variance 0.1), a VAE and the masked conv
# AE at mask ratios 0.1, 0.3 and 0.5, 10 epochs each; beside them a ViT MAE, for the assignment's
# question whether CNN-based masking keeps global information as a ViT does. Then SSIM/PSNR/MAE/MSE,
# t-SNE and PCA of clean and noisy latents, error per epoch, a probe on AE against DAE latents, latent
# interpolation and arithmetic (dog - cat + bird), KL and reconstruction per epoch, per-pixel error heatmaps.
#
#   bash studies/cifar10_assignment.sh                  # on CIFAR-10
#   bash studies/cifar10_assignment.sh fashion-mnist    # the same experiments on another dataset
source "$(dirname "$0")/run.sh"
dataset=${1:-cifar10}
OUT=${OUT:-out/cifar10-assignment}/$dataset

run ae --model ae --dataset $dataset --epochs 10
run dae --model dae --dataset $dataset --noise-std 0.316 --epochs 10
run vae --model vae --dataset $dataset --epochs 10
for ratio in 0.1 0.3 0.5; do
    run mcae-$ratio --model mcae --dataset $dataset --mask-ratio $ratio --epochs 10
done
run mae --model mae --dataset $dataset --epochs 10

analyze ae dae vae mcae-0.1 mcae-0.3 mcae-0.5 mae
