#!/usr/bin/env bash
# The DAE-vs-MAE study: a conv denoising AE against a ViT masked AE, each pretrained for 20 epochs and
# fine-tuned with a classification head, on MNIST, CIFAR-10 and colour-jittered CIFAR-10; then the
# accuracy, PSNR/SSIM and cluster-radius tables, t-SNE, saliency, attention and weight figures.
#
#   bash studies/dae_vs_mae.sh                  # all three datasets
#   bash studies/dae_vs_mae.sh mnist            # some of them: mnist, cifar10, cifar10-jitter
#
# Each pretrained encoder comes with the same encoder fine-tuned from scratch (--epochs 0): what
# pretraining is worth. The study's settings, and where nanoAE's differ, are in README.md.
source "$(dirname "$0")/run.sh"
OUT=${OUT:-out/dae-vs-mae}
runs=()

for dataset in ${*:-mnist cifar10 cifar10-jitter}; do
    case $dataset in
    mnist)
        # DAE: latent 8x3x3, noise factor 0.5, Adam lr 1e-3; head of three layers, fine-tuned 20 epochs at lr 1e-3
        dae=(--model dae --dataset mnist --conv-channels 16,32,64 --latent-channels 8 --noise-std 0.5 --lr 1e-3
             --eval linear,knn,finetune --head mlp --finetune-epochs 20 --head-lr 1e-3)
        # MAE: patch 2, mask ratio 0.75, embed 64 (latent 50x64: 49 visible patches + CLS), Adam lr 1e-3;
        # a linear head on the CLS token
        mae=(--model mae --dataset mnist --patch-size 2 --embed-dim 64 --mask-ratio 0.75 --lr 1e-3
             --eval linear,knn,finetune --finetune-epochs 20 --head-lr 1e-3) ;;
    cifar10)
        # DAE: latent 48x4x4, noise factor 0.1, lr 3e-4, weight decay 1e-5; the three-layer head, 10 epochs
        dae=(--model dae --dataset cifar10 --latent-channels 48 --noise-std 0.1 --lr 3e-4 --weight-decay 1e-5
             --eval linear,knn,finetune --head mlp --finetune-epochs 10)
        # MAE: patch 2, mask ratio 0.75, embed 192 (latent 65x192), lr 1e-4; a linear head, 10 epochs
        mae=(--model mae --dataset cifar10 --patch-size 2 --embed-dim 192 --mask-ratio 0.75 --lr 1e-4
             --eval linear,knn,finetune --finetune-epochs 10) ;;
    cifar10-jitter)
        # both pretrained at lr 1e-4, weight decay 1e-5; a linear head at lr 1e-3 on an encoder at lr 1e-5
        dae=(--model dae --dataset cifar10-jitter --latent-channels 48 --noise-std 0.1 --lr 1e-4 --weight-decay 1e-5
             --eval linear,knn,finetune --finetune-epochs 10 --head-lr 1e-3 --finetune-lr 1e-5)
        mae=(--model mae --dataset cifar10-jitter --patch-size 2 --embed-dim 192 --mask-ratio 0.75 --lr 1e-4
             --weight-decay 1e-5 --eval linear,knn,finetune --finetune-epochs 10 --head-lr 1e-3 --finetune-lr 1e-5) ;;
    *)
        echo "unknown dataset $dataset: choose from mnist, cifar10, cifar10-jitter" >&2
        exit 2 ;;
    esac
    run dae-$dataset "${dae[@]}" --epochs 20
    run mae-$dataset "${mae[@]}" --epochs 20
    run dae-$dataset-scratch "${dae[@]}" --epochs 0 --eval finetune
    run mae-$dataset-scratch "${mae[@]}" --epochs 0 --eval finetune
    runs+=(dae-$dataset mae-$dataset dae-$dataset-scratch mae-$dataset-scratch)
done

analyze "${runs[@]}"
