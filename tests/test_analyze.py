"""analyze.py on tiny runs made by train.py: every figure that applies is drawn as a real image, the others
are not, report.md carries each run's numbers; and the numbers behind two figures, checked on their own."""
import dataclasses
import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
import torch
import torch.nn as nn

import analyze
import train
from ae import AE, AEConfig
from conftest import tiny_datasets
from mae import MAE, MAEConfig
from mcae import MCAE, MCAEConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONV = ["--channels", "8,16", "--latent-channels", "4"]
# run name -> (dataset, train.py flags): every kind of model, and the runs the comparison figures need
RUNS = {
    "ae": ("fashion-mnist", ["--model", "ae", *CONV]),
    "dae": ("fashion-mnist", ["--model", "dae", *CONV, "--noise-std", "0.3"]),
    "dae-mlp": ("fashion-mnist", ["--model", "dae", "--arch", "mlp", "--hidden", "32", "--latent-dim", "8"]),
    "vae": ("fashion-mnist", ["--model", "vae", *CONV, "--latent-dim", "8"]),
    "mcae-identity": ("fashion-mnist", ["--model", "mcae", *CONV, "--mask-ratio", "0"]),
    "mcae-pixel": ("fashion-mnist", ["--model", "mcae", *CONV, "--mask-type", "pixel"]),
    "mcae-block": ("fashion-mnist", ["--model", "mcae", *CONV, "--mask-type", "block"]),
    "mae": ("fashion-mnist", ["--model", "mae", "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
                              "--decoder-embed-dim", "16", "--decoder-depth", "1", "--decoder-num-heads", "2"]),
    "dae-cifar": ("cifar10", ["--model", "dae", *CONV]),
}
EVERY_RUN = ["reconstructions", "curves", "tsne", "weights"]
EXPECTED = {  # per-run figures that apply (and, for models with a decoder, interpolation and arithmetic)
    "ae": EVERY_RUN + ["saliency"],
    "dae": EVERY_RUN + ["saliency"],
    "dae-mlp": EVERY_RUN + ["saliency"],
    "vae": EVERY_RUN + ["saliency", "vae_samples"],
    "mcae-identity": EVERY_RUN + ["saliency", "error_heatmaps"],
    "mcae-pixel": EVERY_RUN + ["saliency", "error_heatmaps"],
    "mcae-block": EVERY_RUN + ["saliency", "error_heatmaps"],
    "mae": EVERY_RUN + ["attention", "error_heatmaps"],
    "dae-cifar": EVERY_RUN + ["saliency"],
}
COMPARISON = ["psnr_per_epoch", "loss_per_epoch", "psnr_vs_noise", "vae_vs_ae", "three_levels"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Train every run of RUNS for two epochs on tiny data, then analyse them all at once (report.md and
    the figures comparing runs go to the default --out: the runs' parent directory)."""
    root = tmp_path_factory.mktemp("analyze")
    with pytest.MonkeyPatch.context() as mp:
        data_dir = tiny_datasets(root / "data", mp)
        for name, (dataset, flags) in RUNS.items():
            train.main(["--dataset", dataset, "--data-dir", data_dir, "--out-dir", str(root / "runs" / name),
                        "--device", "cpu", "--batch-size", "32", "--epochs", "2", "--eval", "linear", *flags])
        runs = analyze.main([str(root / "runs" / name) for name in RUNS]
                            + ["--device", "cpu", "--tsne-per-class", "5", "--tsne-iters", "300"])
    return root, {run.name: run for run in runs}


def assert_real_image(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 150 and image.shape[1] >= 150, image.shape
    assert image[..., :3].std() > 0.02, f"{path} is (nearly) one colour"


def decoder_figures(run):
    """Interpolation and arithmetic for models with a decoder, when the tiny test set (random labels)
    holds the classes they need."""
    if run.kind == "mae":
        return []
    present = set(run.data.test_y.tolist())
    names = analyze.ARITHMETIC[run.args["dataset"]]
    figures = ["interpolation"] if any(a in present and b in present for a, b in analyze.INTERPOLATION_PAIRS) else []
    return figures + (["arithmetic"] if {run.data.classes.index(n) for n in names} <= present else [])


def test_every_figure_that_applies_is_drawn(analysed):
    root, runs = analysed
    for name, expected in EXPECTED.items():
        expected = expected + decoder_figures(runs[name])
        figure_dir = root / "runs" / name / "figures"
        drawn = {f.removesuffix(".png") for f in os.listdir(figure_dir)}
        # the figures that do not apply are skipped: no attention for conv models, no saliency for the MAE, ...
        assert drawn == set(expected), name
        assert set(runs[name].figures) == drawn
        for figure in expected:
            assert_real_image(figure_dir / f"{figure}.png")
    for figure in COMPARISON:
        assert_real_image(root / "runs" / "figures" / f"{figure}.png")


@pytest.mark.parametrize("name", ["vae", "dae-cifar"])
def test_arithmetic_with_every_class_present(analysed, tmp_path, name):
    """The tiny test sets draw their labels at random, so the classes of a - b + c may be missing there;
    relabelled so every class is present, the figure is drawn."""
    run = analysed[1][name]
    labels = torch.arange(len(run.data.test_y)) % 10
    relabelled = dataclasses.replace(run, path=str(tmp_path), figures={},
                                     data=dataclasses.replace(run.data, test_y=labels))
    assert analyze.plot_arithmetic(relabelled) == str(tmp_path / "figures" / "arithmetic.png")
    assert_real_image(tmp_path / "figures" / "arithmetic.png")


def test_report_has_each_runs_numbers_and_links(analysed):
    root, runs = analysed
    report = (root / "runs" / "report.md").read_text()
    for heading in ("## Classification accuracy", "## Reconstruction", "## PSNR (dB) against input noise",
                    "### t-SNE radius, fashion-mnist", "### latent radius / spread, cifar10", "## Figures"):
        assert heading in report
    for name in RUNS:
        results = json.load(open(root / "runs" / name / "results.json"))
        assert f"| {name} | {results['linear_acc']:.4f} |" in report
        assert f"| {name} | {results['psnr']:.2f} | {results['ssim']:.4f} | {results['mse']:.5f} |" in report
    # the cluster tables, one per dataset and measure, have a column per run and a row per class
    headers = [line for line in report.splitlines() if line.startswith("| class |")]
    assert sorted(header.count("|") - 2 for header in headers) == [1, 1, len(RUNS) - 1, len(RUNS) - 1]
    assert "| Ankle boot |" in report and "| truck |" in report
    # every link points to a file that is there
    links = [part.split(")")[0] for part in report.split("](")[1:]]
    assert len(links) == sum(len(run.figures) for run in runs.values()) + len(COMPARISON)
    for link in links:
        assert (root / "runs" / link).is_file(), link
    assert report.count("silhouette") >= 2
    assert "best linear-probe accuracy" in report and "best reconstruction" in report


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "analyze.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "ckpt.pt" in result.stderr and str(tmp_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -----------------------------------------------------------------------------
# the numbers behind the figures


def test_saliency_is_the_squared_jacobian_summed_over_latents_and_channels():
    torch.manual_seed(0)
    model = AE(AEConfig(in_channels=3, image_size=16, channels=(4, 8), latent_channels=2)).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    energy = analyze.jacobian_energy(model, x)  # (2, 16, 16)
    assert energy.shape == (2, 16, 16)
    for i in range(2):
        # the explicit Jacobian, one image at a time: (D, C, H, W)
        jacobian = torch.autograd.functional.jacobian(lambda img: model.encode(img[None])[0], x[i])
        assert torch.allclose(energy[i], jacobian.pow(2).sum(dim=(0, 1)), rtol=1e-10, atol=1e-12)
    # and against central finite differences: a pixel's energy is sum over channels of |dz / dx_{c,h,w}|^2
    eps = 1e-6
    for h, w in [(3, 4), (8, 8), (15, 0)]:
        total = 0.0
        for c in range(3):
            bump = torch.zeros_like(x[:1])
            bump[0, c, h, w] = eps
            column = (model.encode(x[:1] + bump) - model.encode(x[:1] - bump))[0] / (2 * eps)  # (D,)
            total += column.pow(2).sum().item()
        assert total == pytest.approx(energy[0, h, w].item(), rel=1e-6)
    saliency = analyze.normalise_per_image(energy)
    assert saliency.amin(dim=(1, 2)).tolist() == [0, 0] and saliency.amax(dim=(1, 2)).tolist() == [1, 1]


class Identity(nn.Module):
    """An autoencoder that copies its input: its reconstruction PSNR is the noisy input's."""

    def encode(self, x):
        self.shape = x.shape[1:]
        return x.flatten(1)

    def decode(self, z):
        return z.view(-1, *self.shape)


def test_psnr_falls_as_noise_grows():
    x = torch.rand(64, 1, 28, 28)
    recon, noisy = analyze.psnr_against_noise(Identity(), x, analyze.NOISE_VARIANCES)
    assert recon == pytest.approx(noisy)
    assert all(a > b for a, b in zip(noisy, noisy[1:])), noisy
    # a real (untrained) autoencoder: one finite value per variance
    recon, _ = analyze.psnr_against_noise(AE(AEConfig()).eval(), x, analyze.NOISE_VARIANCES)
    assert len(recon) == 4 and all(torch.isfinite(torch.tensor(recon)))


def test_psnr_against_noise_is_reported_for_ae_and_dae_runs(analysed):
    root, runs = analysed
    report = (root / "runs" / "report.md").read_text()
    for name, run in runs.items():
        if run.kind in ("ae", "dae"):
            psnr = run.stats["psnr_vs_noise"]
            assert len(psnr) == 4 and all(0 < v < 100 for v in psnr), (name, psnr)
            assert f"| {name} | " + " | ".join(f"{v:.2f}" for v in psnr) + " |" in report
        else:
            assert "psnr_vs_noise" not in run.stats


@pytest.mark.parametrize("model", [MCAE(MCAEConfig(mask_type="pixel", mask_ratio=0.5)),
                                   MAE(MAEConfig(embed_dim=32, depth=1, decoder_embed_dim=16, decoder_depth=1))])
def test_masked_reconstruction_at_other_ratios(model):
    x = torch.rand(8, 1, 28, 28)
    trained = model.config.mask_ratio
    for ratio in analyze.MASK_RATIOS:
        inp, recon, mask = analyze.masked_reconstruction(model.eval(), x, mask_ratio=ratio)
        assert mask.mean().item() == pytest.approx(ratio, abs=0.08)
        assert torch.equal(inp, x * (1 - mask)) and recon.shape == x.shape
    assert model.config.mask_ratio == trained  # put back


def test_same_masks_for_the_mcae_and_the_plain_ae():
    """The filling table compares models on the very same masked images: same settings, same masks."""
    x = torch.rand(8, 1, 28, 28)
    mcae = MCAE(MCAEConfig(mask_type="block", mask_ratio=0.5)).eval()
    plain = MCAE(MCAEConfig(mask_ratio=0, mask_type="pixel")).eval()
    settings = dict(mask_type="block", mask_ratio=0.5, block_size=8)
    inp_a, _, mask_a = analyze.masked_reconstruction(mcae, x, **settings)
    inp_b, _, mask_b = analyze.masked_reconstruction(plain, x, **settings)
    assert torch.equal(mask_a, mask_b) and torch.equal(inp_a, inp_b) and mask_a.any()
    assert plain.config.mask_ratio == 0 and plain.config.mask_type == "pixel"  # put back


def test_report_compares_masked_filling_with_the_plain_ae(analysed):
    root, runs = analysed
    report = (root / "runs" / "report.md").read_text()
    section = report.split("## Filling in hidden pixels")[1].split("\n## ")[0]
    assert "| mcae-pixel | pixel 0.5 |" in section and "| mcae-block | block 0.5 |" in section
    assert "mcae-identity |" not in section


def test_images_are_picked_one_class_after_another():
    labels = torch.tensor([3, 1, 1, 0, 3, 2, 0, 2])
    assert analyze.class_indices(labels, 6).tolist() == [3, 1, 5, 0, 6, 2]
    assert analyze.balanced_indices(labels, 1).tolist() == [3, 1, 5, 0]
