"""analyze.py on tiny runs made by train.py: every figure that applies is drawn as a real image, the others
are not, analysis.json holds every number report.md shows and report.md can be written from it alone;
and the numbers behind the figures, checked on their own."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import matplotlib.image
from matplotlib.colors import LogNorm
import pytest
import torch
import torch.nn as nn

import analyze
import data
import figures
import metrics
import train
from ae import AE, AEConfig
from conftest import FactoryWatch, tiny_datasets
from mae import MAE, MAEConfig
from mcae import MCAE, MCAEConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONV = ["--conv-channels", "8,16", "--latent-channels", "4"]
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
                              "--decoder-embed-dim", "16", "--decoder-depth", "1"]),
    "dae-cifar": ("cifar10", ["--model", "dae", *CONV]),
    "ae-linear": ("fashion-mnist", ["--model", "ae", "--arch", "linear", "--latent-dim", "8"]),
}
EVERY_RUN = ["reconstructions", "tsne", "pca", "weights"]
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
    "ae-linear": EVERY_RUN + ["saliency"],
}
FACTORIES_WITHOUT_DEVICE = set()  # what FactoryWatch saw while the `analysed` runs were made and analysed
COMPARISON = ["psnr_per_epoch", "loss_per_epoch", "psnr_vs_noise", "mask_ratios", "vae_vs_ae", "three_levels",
              "cnn_vs_vit_masking", "linear_ae_vs_pca", "when_mae_fails"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """Train every run of RUNS for two epochs on tiny data, then analyse them all at once (report.md and
    the figures comparing runs go to the default --out: the runs' parent directory)."""
    root = tmp_path_factory.mktemp("analyze")
    with pytest.MonkeyPatch.context() as mp, FactoryWatch() as factories:
        data_dir = tiny_datasets(root / "data", mp)
        for name, (dataset, flags) in RUNS.items():
            train.main(["--dataset", dataset, "--data-dir", data_dir, "--out-dir", str(root / "runs" / name),
                        "--device", "cpu", "--batch-size", "32", "--epochs", "2", "--eval", "linear,finetune",
                        "--finetune-epochs", "1", *flags])
        runs, analyses, figures = analyze.main([str(root / "runs" / name) for name in RUNS]
                                               + ["--device", "cpu", "--tsne-per-class", "5", "--tsne-iters", "300"])
    FACTORIES_WITHOUT_DEVICE.update(factories.found)
    return root, {run.name: run for run in runs}, {a["name"]: a for a in analyses}, figures


def test_every_tensor_is_made_on_the_runs_device(analysed):
    """Every tensor factory that train.py, the models and analyze.py call while training, evaluating,
    probing, fine-tuning and drawing every figure names its device (FactoryWatch): on a GPU run a tensor
    made without one lands on the CPU beside the run's tensors."""
    assert FACTORIES_WITHOUT_DEVICE == set()


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
    drawn = ["interpolation"] if any(a in present and b in present for a, b in analyze.INTERPOLATION_PAIRS) else []
    return drawn + (["arithmetic"] if {run.data.classes.index(n) for n in names} <= present else [])


def test_every_figure_that_applies_is_drawn(analysed):
    root, runs, analyses, figures = analysed
    for name, expected in EXPECTED.items():
        expected = expected + decoder_figures(runs[name])
        figure_dir = root / "runs" / name / "figures"
        drawn = {f.removesuffix(".png") for f in os.listdir(figure_dir)}
        # the figures that do not apply are skipped: no attention for conv models, no saliency for the MAE, ...
        assert drawn == set(expected), name
        assert set(figures[name]) == drawn
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
    relabelled = dataclasses.replace(run, data=dataclasses.replace(run.data, test_y=labels))
    path = str(tmp_path / "figures" / "arithmetic.png")
    assert analyze.arithmetic(relabelled, None, path) == path
    assert_real_image(path)


def test_report_has_each_runs_numbers_and_links(analysed):
    root, runs, analyses, figures = analysed
    report = (root / "runs" / "report.md").read_text()
    for heading in ("## Classification accuracy", "## Reconstruction", "## PSNR (dB) against input noise",
                    "## Classifying latents of noisy images", "### t-SNE radius, fashion-mnist",
                    "### latent radius / spread, cifar10", "## Figures"):
        assert heading in report
    # the noisy-latent probe: one accuracy per noise level, clean first, for the AE and DAE runs
    probe = analyses["dae"]["noise"]["probe"]
    assert probe["variances"][0] == 0 and len(probe["accuracy"]) == len(probe["variances"])
    assert all(0 <= a <= 1 for a in probe["accuracy"])
    assert "| dae | " + " | ".join(f"{a:.3f}" for a in probe["accuracy"]) + " |" in report
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
    assert len(links) == sum(len(drawn) for drawn in figures.values())
    assert set(figures["comparing runs"]) == set(COMPARISON)
    for link in links:
        assert (root / "runs" / link).is_file(), link
    assert report.count("silhouette") >= 2
    assert "best reconstruction" in report
    # every probe beside its baselines: raw pixels and the untrained encoder (and the MAE's patch tokens)
    for column in ("features: linear", "raw pixels: linear", "untrained: linear", "patch tokens: linear"):
        assert column in report


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
    energy = analyze.metrics.jacobian_energy(model.encode, x)  # (2, 16, 16)
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


class Identity(nn.Module):
    """An autoencoder that copies its input: its reconstruction PSNR is the noisy input's."""

    def encode(self, x):
        self.shape = x.shape[1:]
        return x.flatten(1)

    def decode(self, z):
        return z.view(-1, *self.shape)


def test_psnr_falls_as_noise_grows():
    x = torch.rand(64, 1, 28, 28)
    recon, noisy = analyze.psnr_against_noise(Identity(), x, figures.NOISE_VARIANCES)
    assert recon == pytest.approx(noisy)
    assert all(a > b for a, b in zip(noisy, noisy[1:])), noisy
    # a real (untrained) autoencoder: one finite value per variance
    recon, _ = analyze.psnr_against_noise(AE(AEConfig()).eval(), x, figures.NOISE_VARIANCES)
    assert len(recon) == 4 and all(torch.isfinite(torch.tensor(recon)))


def test_psnr_against_noise_is_reported_for_ae_and_dae_runs(analysed):
    root, runs, analyses, figures = analysed
    report = (root / "runs" / "report.md").read_text()
    for name, run in runs.items():
        if run.kind in ("ae", "dae"):
            psnr = analyses[name]["noise"]["psnr"]
            assert len(psnr) == 4 and all(0 < v < 100 for v in psnr), (name, psnr)
            assert f"| {name} | " + " | ".join(f"{v:.2f}" for v in psnr) + " |" in report
        else:
            assert "noise" not in analyses[name]


class FrozenConfig:
    """A model's config that refuses every change: analysis must pass other mask ratios as arguments."""

    def __init__(self, config):
        object.__setattr__(self, "config", config)

    def __getattr__(self, name):
        return getattr(self.config, name)

    def __setattr__(self, name, value):
        raise AssertionError(f"the analysis set config.{name} = {value!r}")


@pytest.mark.parametrize("model", [MCAE(MCAEConfig(mask_type="pixel", mask_ratio=0.5)),
                                   MAE(MAEConfig(embed_dim=32, depth=1, decoder_embed_dim=16, decoder_depth=1))])
def test_masked_reconstruction_at_other_ratios_leaves_the_config_alone(model):
    x = torch.rand(8, 1, 28, 28)
    model.config = FrozenConfig(model.config)
    for ratio in figures.MASK_RATIOS:
        inp, recon, mask = analyze.masked_reconstruction(model.eval(), x, ratio, mask_type="pixel")
        assert mask.mean().item() == pytest.approx(ratio, abs=0.08)
        assert torch.equal(inp, x * (1 - mask)) and recon.shape == x.shape


def test_same_masks_for_the_mcae_and_the_plain_ae():
    """The filling table compares models on the very same masked images: same settings, same masks."""
    x = torch.rand(8, 1, 28, 28)
    mcae = MCAE(MCAEConfig(mask_type="block", mask_ratio=0.5)).eval()
    plain = AE(AEConfig()).eval()
    inp_a, _, mask_a = analyze.masked_reconstruction(mcae, x, 0.5, "block", 8)
    inp_b, _, mask_b = analyze.masked_reconstruction(plain, x, 0.5, "block", 8)
    assert torch.equal(mask_a, mask_b) and torch.equal(inp_a, inp_b) and mask_a.any()


def test_report_compares_masked_filling_with_the_plain_ae(analysed):
    root, runs, analyses, figures = analysed
    report = (root / "runs" / "report.md").read_text()
    section = report.split("## Filling in hidden pixels")[1].split("\n## ")[0]
    # the MCAEs' own settings, with the plain AEs (AE, MCAE at ratio 0) on the same masks beside them
    for mask in ("pixel 0.5", "block 0.5 (8x8)"):
        for name in ("ae", "mcae-identity", "mcae-pixel" if mask.startswith("pixel") else "mcae-block"):
            assert f"| {name} | fashion-mnist | {mask} |" in section, (name, mask)
    assert "| mae | fashion-mnist | patch 0.5 |" in section and "| dae |" not in section


def test_images_are_picked_one_class_after_another():
    labels = torch.tensor([3, 1, 1, 0, 3, 2, 0, 2])
    assert data.class_indices(labels, 6).tolist() == [3, 1, 5, 0, 6, 2]
    assert data.balanced_indices(labels, 1).tolist() == [3, 1, 5, 0]


# -----------------------------------------------------------------------------
# measure once, then draw: analysis.json is all report.md needs


def test_analysis_json_holds_what_the_report_shows(analysed, tmp_path):
    """report.md written from the analysis.json files alone, with no model, data or figure, is the report
    main() wrote, but for the links to figures."""
    root, runs, analyses, figures = analysed
    saved = [json.load(open(root / "runs" / name / "analysis.json")) for name in RUNS]
    assert [a["name"] for a in saved] == list(RUNS)
    for a in saved:
        assert a["results"] == json.load(open(root / "runs" / a["name"] / "results.json"))
    analyze.figures.write_report(saved, str(tmp_path))
    alone = (tmp_path / "report.md").read_text()
    full = (root / "runs" / "report.md").read_text()
    assert "## Figures" not in alone and alone.strip() == full.split("## Figures")[0].strip()


def test_report_numbers_come_from_the_analysis(tmp_path):
    """Change a number in an analysis and the report shows the new one: nothing else feeds it."""
    analysis = fake_analysis("run-a", "dae", "mnist", psnr=21.5, noise_std=0.1)
    figures.write_report([analysis], str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| run-a | 21.50 |" in report and "noise std 0.1 (variance 0.01)" in report
    assert "| run-a | 1.00000 | 0.00 |" in report  # worked example: MSE 1 -> PSNR 10 log10(1/1) = 0 dB


def fake_analysis(name, kind, dataset, psnr, psnr_hidden=None, noise_std=None, mask_ratio=0.75):
    """An analysis dict as measure() writes it, with made-up numbers."""
    config = {"arch": "conv", "channels": [8, 16], "l1": 0.0}
    if kind == "dae":
        config["noise_std"] = noise_std
    if kind == "mae":
        config = {"patch_size": 4, "depth": 2, "mask_ratio": mask_ratio}
    results = {"psnr": psnr, "ssim": 0.5, "mse": 0.01, "l1": 0.05, "linear_acc": 0.5}
    if psnr_hidden is not None:
        results["psnr_hidden"] = psnr_hidden
    stats = {"radius": [1.0, 2.0], "relative_radius": [0.5, 0.6], "silhouette": 0.1}
    return {"name": name, "kind": kind, "dataset": dataset, "classes": ["a", "b"], "config": config, "epochs": 2,
            "results": results, "tsne": {"latent_size": 16, "clean": {"tsne": stats, "latent": stats}},
            "worked_example": {"mse": 1.0, "psnr": 0.0, "brightness": 1.0, "contrast_structure": 0.5, "ssim": 0.5}}


def test_tsne_counts_the_images_it_has(analysed):
    """The tiny test sets hold fewer than --tsne-per-class (5) images of some classes: the counts say so."""
    root, runs, analyses, figures = analysed
    for name in ("ae", "dae-cifar"):
        labels, tsne = runs[name].data.test_y.cpu(), analyses[name]["tsne"]
        assert tsne["per_class"] == torch.bincount(labels, minlength=10).clamp(max=5).tolist()
        assert len(tsne["labels"]) == len(tsne["clean"]["embedding"]) == sum(tsne["per_class"])


def test_best_reconstruction_compares_like_with_like():
    """The MAE's whole-image PSNR counts the patches it copied, so masked models are ranked by hidden PSNR,
    apart from the others, and each dataset apart."""
    analyses = [fake_analysis("dae-mnist", "dae", "mnist", 25.0, noise_std=0.3),
                fake_analysis("ae-mnist", "ae", "mnist", 27.0),
                fake_analysis("mae-mnist", "mae", "mnist", 35.0, psnr_hidden=15.0),
                fake_analysis("mae-big-mnist", "mae", "mnist", 30.0, psnr_hidden=17.0),
                fake_analysis("dae-cifar", "dae", "cifar10", 29.0, noise_std=0.3)]
    best = figures.best_reconstructions(analyses)
    assert {group: (a["name"], key) for group, (a, key) in best.items()} == {
        ("mnist", False): ("ae-mnist", "psnr"), ("mnist", True): ("mae-big-mnist", "psnr_hidden"),
        ("cifar10", False): ("dae-cifar", "psnr")}
    summary = figures.summary(analyses)
    assert "mae-big-mnist's, 17.00 dB PSNR on the hidden pixels" in summary
    assert "On cifar10, the best reconstruction by a model given whole or noisy images is dae-cifar's" in summary
    assert "mae-mnist's" not in summary


class BlackImages(nn.Module):
    """The decoder of a dead autoencoder: black images, whatever the code."""

    def forward(self, z):
        return torch.zeros_like(z)


def test_dead_model_fills_holes_no_better_than_black(analysed):
    """A model that outputs black everywhere gets exactly the black-fill hidden PSNR, however high that is."""
    root, runs, analyses, figures = analysed
    dead = nn.Module()
    dead.encoder, dead.decoder = nn.Identity(), BlackImages()
    measured = analyze.measure_masking(dataclasses.replace(runs["ae"], model=dead))
    for setting in measured["settings"]:
        assert setting["hidden_psnr"] == pytest.approx(setting["black_fill_hidden_psnr"])
    assert {(s["mask_type"], s["mask_ratio"]) for s in measured["settings"]} >= {("pixel", 0.5), ("block", 0.1)}


def test_worked_example_is_psnr_and_ssim_of_the_first_image(analysed):
    root, runs, analyses, figures = analysed
    for name in ("ae", "dae-cifar"):
        run, example = runs[name], analyses[name]["worked_example"]
        torch.manual_seed(0)
        x = analyze.test_images(run.data, 1)
        recon = run.model(x)[1]["recon"]
        assert example["mse"] == pytest.approx((recon - x).pow(2).mean().item(), rel=1e-5)
        assert example["psnr"] == pytest.approx(10 * math.log10(1 / example["mse"]))
        assert example["ssim"] == pytest.approx(metrics.ssim(recon, x).item(), rel=1e-5)
        assert 0 < example["brightness"] <= 1


def test_attention_on_the_whole_image_is_the_models_own_map():
    torch.manual_seed(0)
    model = MAE(MAEConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                          decoder_depth=1)).eval()
    x = torch.rand(3, 1, 28, 28)
    maps, mask = analyze.cls_attention(model, x)
    torch.manual_seed(0)
    own = model.attention_maps(x)[0].reshape(3, 2, 7, 7).repeat_interleave(4, 2).repeat_interleave(4, 3)
    assert not mask.any() and torch.allclose(maps, own * 49, atol=1e-4)  # 49 patches: 1 = an even share
    maps, mask = analyze.cls_attention(model, x, mask_ratio=0.75)
    assert mask.mean().item() == pytest.approx(0.75, abs=0.05)
    assert (maps * mask).abs().max() == 0  # hidden patches: the encoder never saw them, no attention
    # 12 patches seen, 16 pixels each: their weights average 1 (an even share) in every map
    assert torch.allclose(maps.sum(dim=(2, 3)) / 16, torch.full((3, 2), 12.0), atol=1e-4)


def test_heatmaps_take_their_colours_from_the_scale_given():
    """A log colour scale: an even share (1) sits 4/9 of the way up from 1/16 to 32, and a
    hidden patch (0) or anything past either end gets that end's colour; the default scale is 0 .. 1."""
    def colours(values, *scale):
        return figures.heat_images(torch.tensor([[values]]), *scale)[0, :, 0].T  # (values, 3)

    def expected(levels):
        return torch.tensor(figures.HEAT_CMAP(levels)[:, :3]).float()

    log = colours([0.0, 1 / 32, 1.0, 32.0, 64.0], LogNorm(1 / 16, 32, clip=True))
    assert torch.allclose(log, expected([0, 0, 4 / 9, 1, 1]), atol=1e-6)
    assert torch.allclose(colours([-1.0, 0.5, 2.0]), expected([0, 0.5, 1]), atol=1e-6)
    # hidden pixels take the hidden colour, never a cold one
    hidden = figures.heat_images(torch.tensor([[[0.0, 0.0]]]), hidden=torch.tensor([[[1.0, 0.0]]]))[0, :, 0].T
    assert torch.allclose(hidden[0], torch.tensor(figures.HIDDEN_COLOUR)) and torch.allclose(hidden[1], expected([0])[0])


def test_a_run_on_your_own_image_folder_is_analysed(tmp_path):
    """--dataset folder: analyze.py reloads the folder at the run's size and channels, with its seeded split
    and the folder names as classes."""
    from conftest import make_image_folder
    root = make_image_folder(tmp_path / "shapes", n_per_class=12)
    run_dir = tmp_path / "runs" / "ae-folder"
    train.main(["--model", "ae", "--dataset", "folder", "--data-dir", root, "--image-size", "16", "--channels", "1",
                "--epochs", "1", "--eval", "", "--device", "cpu", *CONV, "--out-dir", str(run_dir)])
    runs, analyses, _ = analyze.main([str(run_dir)])
    data = runs[0].data
    assert data.classes == ["bars", "discs"] and data.test_x.shape[1:] == (1, 16, 16) and len(data.test_x) == 2
    for name in ("reconstructions", "tsne", "saliency"):
        assert matplotlib.image.imread(run_dir / "figures" / f"{name}.png").shape[0] > 100


def test_mlp_sweeps_give_the_best_l1_of_each_size_and_table_1():
    def run(kind, latent, l1, psnr, noise=None, arch="mlp", hidden=(512, 256), dataset="mnist"):
        config = {"arch": arch, "latent_dim": latent, "l1": l1, "hidden": hidden,
                  **({"noise_std": noise} if noise else {})}
        log = [{"epoch": e + 1, "psnr": psnr - 2 + e} for e in range(3)]
        return {"kind": kind, "dataset": dataset, "name": f"{kind}-{latent}-{l1}-{psnr}", "config": config,
                "results": {"psnr": psnr}, "log": log}
    analyses = [run("dae", 32, 0.0, 20.0, 0.1), run("dae", 32, 1e-4, 21.0, 0.1), run("dae", 64, 0.0, 22.5, 0.1),
                run("dae", 64, 1e-4, 22.0, 0.1), run("ae", 32, 0.0, 25.0), run("dae", 32, 0.0, 30.0, 0.1, "conv"),
                run("dae", 32, 0.0, 19.0, 0.1, hidden=(656, 512, 256, 128))]
    sweeps = figures.mlp_sweeps(analyses)
    assert set(sweeps) == {"mnist, 784-512-256-z, noise std 0.1", "mnist, 784-512-256-z, noise std 0",
                           "mnist, 784-656-512-256-128-z, noise std 0.1"}  # the conv run is no MLP
    assert [a["config"]["l1"] for a in sweeps["mnist, 784-512-256-z, noise std 0.1"][32]] == [0.0, 1e-4]
    # table 1: the best and the worst MLP run of the dataset, the conv run left out
    table = "\n".join(figures.sweep_section(analyses))
    best, worst = [line for line in table.splitlines() if "| best |" in line or "| worst |" in line]
    assert "| 25.00 |" in best and "| 19.00 | 784-656-512-256-128-z | 32 |" in worst


def test_a_sweep_shows_its_best_and_worst_runs_per_epoch(tmp_path, monkeypatch):
    """More than eight runs in a panel (a sweep): the loss figure keeps the best and the worst (the MLP
    report's figure 3), and an AE's L1 terms get no VAE panel."""
    analyses = [{"kind": "dae", "name": f"run{i}", "dataset": "mnist", "config": {"l1": 1e-4}, "results": {"psnr": 20.0 + i},
                 "log": [{"epoch": 1, "train_loss": 0.1, "test_loss": 0.1, "recon_loss": 0.1, "test_recon_loss": 0.1}]}
                for i in range(10)]
    drawn = []
    monkeypatch.setattr(figures, "save", lambda fig, path, title: drawn.append(
        [(ax.get_title(), [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")])
         for ax in fig.axes if ax.get_lines()]))
    figures.plot_loss_per_epoch(analyses, str(tmp_path / "loss.png"))
    (title, labels), = drawn[0]
    assert "the best and the worst of 10 runs" in title and labels == ["run9", "run0"]
