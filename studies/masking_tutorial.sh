#!/usr/bin/env bash
# The masking tutorial: the tiny MLP AE 784-256-64 and a linear AE beside PCA; the three levels of
# reconstruction difficulty (nothing hidden, random pixels, 8x8 blocks at ratio 0.5) as three runs of the
# masked conv AE; the DAE and the MAE it sets against each other; and "when MAE fails", the MAE trained
# with a quarter to nine tenths of its patches hidden. 20 epochs each (the tutorial sets none).
#
#   bash studies/masking_tutorial.sh            # on MNIST
#   bash studies/masking_tutorial.sh fashion-mnist
source "$(dirname "$0")/run.sh"
dataset=${1:-mnist}
OUT=${OUT:-out/masking-tutorial}/$dataset

run tiny-ae --model ae --dataset $dataset --arch mlp --hidden 256 --latent-dim 64 --epochs 20
run linear-ae --model ae --dataset $dataset --arch linear --latent-dim 64 --epochs 20
run level1-identity --model mcae --dataset $dataset --mask-ratio 0 --epochs 20
run level2-pixels --model mcae --dataset $dataset --mask-type pixel --mask-ratio 0.5 --epochs 20
run level3-blocks --model mcae --dataset $dataset --mask-type block --block-size 8 --mask-ratio 0.5 --epochs 20
run dae --model dae --dataset $dataset --noise-std 0.316 --epochs 20
for ratio in 0.25 0.5 0.75 0.9; do
    run mae-$ratio --model mae --dataset $dataset --mask-ratio $ratio --epochs 20
done

analyze tiny-ae linear-ae level1-identity level2-pixels level3-blocks dae mae-0.25 mae-0.5 mae-0.75 mae-0.9
