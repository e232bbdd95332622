#!/usr/bin/env bash
# The MLP denoising report: MLP denoising AEs on MNIST and Fashion-MNIST, 20 epochs each, batch 128,
# lr 1e-3. Two architectures (784-512-256-z and 784-656-512-256-128-z), four latent sizes z and three L1
# weights at noise variance 0.01; then the best of them at noise variances 0.02, 0.05 and 0.1. Then
# table 1 (best and worst PSNR), PSNR per epoch for each z, train and test loss of the best and the
# worst run, denoised images, PSNR against noise variance.
#
#   bash studies/mlp_report.sh                  # both datasets
#   bash studies/mlp_report.sh fashion-mnist    # one: mnist or fashion-mnist
#
# Noise is a standard deviation: variance 0.01, 0.02, 0.05, 0.1 = --noise-std 0.1, 0.141, 0.224, 0.316.
source "$(dirname "$0")/run.sh"
OUT=${OUT:-out/mlp-report}
runs=()

latent_sizes="15 30 50 100"
l1_weights="1e-5 1e-4 1e-3"
if [ -n "${QUICK:-}" ]; then  # the smoke test: fewer runs, every figure and table still drawn
    latent_sizes="15 100"
    l1_weights="1e-4"
fi

for dataset in ${*:-mnist fashion-mnist}; do
    for hidden in 512,256 656,512,256,128; do
        for z in $latent_sizes; do
            for l1 in $l1_weights; do
                name=$dataset/h$hidden-z$z-l1-$l1-var0.01
                run $name --model dae --dataset $dataset --arch mlp --hidden $hidden --latent-dim $z --l1 $l1 \
                    --noise-std 0.1 --batch-size 128 --lr 1e-3 --epochs 20
                runs+=($name)
            done
        done
    done
    for variance_std in 0.02:0.141 0.05:0.224 0.1:0.316; do
        name=$dataset/h512,256-z100-l1-1e-4-var${variance_std%:*}
        run $name --model dae --dataset $dataset --arch mlp --hidden 512,256 --latent-dim 100 --l1 1e-4 \
            --noise-std ${variance_std#*:} --batch-size 128 --lr 1e-3 --epochs 20
        runs+=($name)
    done
done

ANALYZE_FLAGS="--tsne-per-class 50 --tsne-iters 500"  # 54 runs: a smaller t-SNE of each keeps it to minutes
analyze "${runs[@]}"
