"""Every model learns from the first epochs at the flags a user gets by default, on real digits and
clothes: short runs, a few thousand images. Only the run's length and what to evaluate are set here;
batch size, learning rate and seed are train.py's defaults, so these tests fail when the defaults do.
"""
import json

import pytest

import metrics
import train
from data import load_data, to_float
from conftest import MNIST_DEV, needs_fashion_mnist, needs_mnist_dev

AE_FAMILY = [
    ("ae", "conv"), ("ae", "mlp"), ("dae", "conv"), ("dae", "mlp"),
    ("vae", "conv"), ("vae", "mlp"), ("mcae", "conv"), ("mcae", "mlp"),
]


def mean_image_psnr(dataset, data_dir):
    """PSNR of the training set's mean image against every test image: what a model that ignores its
    input scores, so a model that learned nothing lands here or below."""
    data = load_data(dataset, data_dir, "cpu", train_size=4000)
    mean = to_float(data.train_x).mean(0, keepdim=True)  # (1, C, H, W)
    test = to_float(data.test_x)
    return metrics.psnr(mean.expand_as(test), test).mean().item()


def short_run(tmp_path, model, arch, dataset, data_dir, *flags):
    """Two epochs on the first 4000 training images; arch None for the MAE, which has only one."""
    out = tmp_path / f"{model}-{arch}"
    arch_flags = ["--arch", arch] if arch else []
    train.main(["--model", model, *arch_flags, "--dataset", dataset, "--data-dir", str(data_dir),
                "--out-dir", str(out), "--epochs", "2", "--train-size", "4000", *flags])
    with open(out / "results.json") as f:
        return json.load(f)


@needs_mnist_dev
@pytest.mark.parametrize("model,arch", AE_FAMILY)
def test_learns_real_digits_in_two_epochs(tmp_path, capsys, model, arch):
    """A saturated sigmoid or dead ReLU layers leave the output at the mean image or black (~10 dB)."""
    results = short_run(tmp_path, model, arch, "mnist", MNIST_DEV, "--eval", "knn")
    assert "hardly differ" not in capsys.readouterr().out  # no dead-run warning at any epoch
    floor = mean_image_psnr("mnist", MNIST_DEV)  # 12.1 dB
    # 1.5 dB above it: the MLP VAE, whose KL term trades sharpness for a smooth latent, is the slowest
    # (14.2 dB after 2 epochs, 15.5 after 5); the conv AE reaches 20.6
    assert results["psnr"] > floor + 1.5, (results, floor)
    assert results["knn_acc"] > 0.75, results  # chance is 0.1; a dead conv AE gave 0.49


@needs_fashion_mnist
@pytest.mark.parametrize("model,arch", [("dae", "conv"), ("ae", "mlp"), ("vae", "conv"), ("mcae", "conv")])
def test_learns_real_fashion_mnist_in_two_epochs(tmp_path, monkeypatch, model, arch):
    data_dir = tmp_path / "data"  # train.py unpacks Debian's files here
    results = short_run(tmp_path, model, arch, "fashion-mnist", data_dir, "--eval", "linear")
    floor = mean_image_psnr("fashion-mnist", data_dir)
    assert results["psnr"] > floor + 1.5, (results, floor)
    assert results["linear_acc"] > 0.60, results  # chance is 0.1


@needs_mnist_dev
def test_mae_fills_in_hidden_patches_of_real_digits_in_five_epochs(tmp_path, capsys):
    """The MAE's decoder first predicts every hidden patch as the average patch there, the mean image's
    score (12.1 dB); a decoder that has learned to read the visible patches does better."""
    out = tmp_path / "mae"
    train.main(["--model", "mae", "--dataset", "mnist", "--data-dir", str(MNIST_DEV), "--out-dir", str(out),
                "--epochs", "5", "--eval", ""])
    with open(out / "results.json") as f:
        results = json.load(f)
    assert "hardly differ" not in capsys.readouterr().out
    assert results["psnr_hidden"] > mean_image_psnr("mnist", MNIST_DEV) + 0.5, results
