"""
Every figure and table of the four autoencoder studies nanoAE reproduces, drawn from finished runs.
In brackets, the studies that show each one: DvM = the DAE-vs-MAE study (MNIST, CIFAR-10),
Mask = the masking tutorial (three levels of masking), C10 = the CIFAR-10 AE/DAE/VAE/MCAE assignment,
MLP = the report on MLP denoising AEs (MNIST, Fashion-MNIST).

    python analyze.py out/ae-fashion-mnist out/dae-fashion-mnist out/mae-fashion-mnist

Measure once, then draw: `measure` computes a run's numbers into a plain dict, saved as
RUN_DIR/analysis.json; the figures read it, and report.md is written from those dicts alone.

Per run, in RUN_DIR/figures/:
    reconstructions.png   original / what the encoder saw / reconstruction        (DvM, C10, MLP)
    tsne.png              t-SNE of the latents of clean and of noisy test images  (DvM, C10)
    saliency.png          AE, DAE, VAE, MCAE: how strongly each pixel moves the latent code (DvM)
    attention.png         MAE: last-layer CLS attention per head, on the whole and the masked image (DvM)
    weights.png           histogram of every weight tensor, no norm layers, no biases (DvM)
    interpolation.png     models with a decoder: walking the latent line between two images (C10)
    arithmetic.png        models with a decoder: class-mean latent arithmetic, e.g. dog - cat + bird (C10)
    vae_samples.png       VAE: images decoded from the prior                       (C10)
    error_heatmaps.png    MCAE, MAE: per-pixel squared error at mask ratios 0.1, 0.3, 0.5 (C10)
Comparing the runs, in --out (default: the parent of the first run dir):
    figures/psnr_per_epoch.png   test PSNR per epoch, a panel per dataset, masked models apart (C10, MLP)
    figures/loss_per_epoch.png   train and test loss per epoch, a panel per kind of loss; the VAE's KL (C10, MLP)
    figures/psnr_vs_noise.png    AE, DAE: PSNR against test noise variance; each DAE at its training noise (MLP)
    figures/psnr_per_latent.png  MLP AE, DAE: best PSNR at each latent size over the L1 settings tried (MLP)
    figures/mask_ratios.png      MCAE runs trained at different mask ratios, tested at 0.1, 0.3, 0.5 (C10)
    figures/vae_vs_ae.png        a VAE and an AE run of one dataset: originals and both reconstructions (C10)
    figures/three_levels.png     MCAE runs hiding nothing, random pixels and blocks (Mask)
    report.md                    runs and settings, accuracy, reconstruction, filling-in and cluster tables,
                                 PSNR and SSIM worked through for one image, links to every figure
Measured on the first test images (up to 1000; a few hundred per class for t-SNE): minutes on a CPU.
"""
import argparse
import dataclasses
import json
import math
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

import metrics
import evaluate
import loop
import train
from data import Data, RunError, load_data, to_float
from mae import MAE, random_masking
from mcae import random_mask

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "figure.titlesize": 11, "legend.fontsize": 8,
                     "axes.formatter.useoffset": False})  # flat curves: 9.5589, not "1e-5 + 9.5589"

N_IMAGES = 8                                  # test images per image figure
N_MEASURE = 1000                              # test images behind the PSNR sweeps (fewer if the test set is)
NOISE_VARIANCES = [0.01, 0.02, 0.05, 0.1]     # the MLP report's noise levels, as variances
MASK_RATIOS = [0.1, 0.3, 0.5]                 # the CIFAR-10 assignment's MCAE mask ratios
DEFAULT_NOISE_STD = 0.316                     # t-SNE of noisy inputs for models trained without noise: variance 0.1
AE_FAMILY = ("ae", "dae", "vae", "mcae")      # encoders that saliency maps are drawn for
# class-mean latent arithmetic a - b + c, by class name: the CIFAR-10 assignment's dog - cat + bird, and
# one triple in the same spirit for the other datasets (what b lacks and a has, added to c)
ARITHMETIC = {"mnist": ("7", "1", "0"), "fashion-mnist": ("Ankle boot", "Sneaker", "Sandal"),
              "cifar10": ("dog", "cat", "bird"), "cifar10-jitter": ("dog", "cat", "bird")}
INTERPOLATION_PAIRS = [(0, 1), (3, 5), (7, 9)]  # class indices of the image pairs to interpolate between


class AnalyzeError(Exception):
    """A problem with the runs given (no checkpoint, ...): reported in one line, no stack trace."""


# -----------------------------------------------------------------------------
# runs and data


@dataclasses.dataclass
class Run:
    name: str               # the run directory's name, used in legends and tables
    path: str               # the run directory
    model: nn.Module        # in eval mode, on the analysis device
    kind: str               # 'ae', 'dae', 'vae', 'mcae' or 'mae'
    args: dict              # train.py's arguments
    config: dict            # the model's config, as saved in the checkpoint
    log: list               # one dict per epoch (log.jsonl)
    results: dict           # results.json (empty if the run stopped before writing it)
    data: Data              # the run's dataset


def load_runs(run_dirs, device, data_dir=None):
    """Load every run with its log, results and dataset. Each run's data comes from the --data-dir it was
    trained with, so runs of different datasets mix; data_dir overrides it. Each dataset is read once."""
    for run_dir in run_dirs:  # check them all first: a typo should not cost the time of loading the rest
        if not os.path.isfile(os.path.join(run_dir, "ckpt.pt")):
            raise AnalyzeError(f"{run_dir} has no ckpt.pt: give run directories written by train.py")
    names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    datasets, runs = {}, []
    for run_dir, name in zip(run_dirs, names):
        if names.count(name) > 1:  # out/a/dae and out/b/dae: keep them apart in tables and legends
            name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(run_dir))), name)
        model, args, ckpt = train.load_run(run_dir, device)
        dataset, directory = args["dataset"], data_dir or args["data_dir"]
        channels, size = ckpt["config"]["in_channels"], ckpt["config"]["image_size"]
        # the jittered CIFAR-10 test set and a folder's test split are drawn from the run's seed
        key = (dataset, directory, args["seed"] if dataset in ("cifar10-jitter", "folder") else 0, channels, size)
        if key not in datasets:
            datasets[key] = load_data(dataset, directory, device, seed=args["seed"], image_size=size, channels=channels)
        results_path = os.path.join(run_dir, "results.json")
        results = json.load(open(results_path)) if os.path.exists(results_path) else {}
        log = loop.read_log(os.path.join(run_dir, "log.jsonl"), ckpt["epoch"])
        runs.append(Run(name, run_dir, model, ckpt["model_name"], args, ckpt["config"], log, results, datasets[key]))
    return runs


def rank_in_class(labels):
    """For each test image, how many images of its class come before it: (N,) -> (N,)."""
    onehot = F.one_hot(labels.cpu())
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def class_indices(labels, n):
    """Indices of n test images, one class after another (0, 1, 2, ..., 0, 1, ...): a row shows every class."""
    labels = labels.cpu()
    return torch.argsort(rank_in_class(labels) * (int(labels.max()) + 1) + labels)[:n]


def balanced_indices(labels, per_class):
    """The first per_class test images of every class (fewer where a class has fewer), class by class."""
    first = torch.nonzero(rank_in_class(labels) < per_class).flatten()
    return first[torch.argsort(labels.cpu()[first], stable=True)]


def test_images(run, idx=N_MEASURE):
    """Test images idx (a tensor of indices, or a count: the first ones) as floats in [0, 1]: (n, C, H, W)."""
    if isinstance(idx, int):
        idx = torch.arange(min(idx, len(run.data.test_x)))
    return to_float(run.data.test_x[idx.to(run.data.test_x.device)])


def add_noise(x, std):
    return (x + std * torch.randn_like(x)).clamp(0, 1)  # clipped, as dae.py: still an image


@torch.no_grad()
def in_batches(function, x, batch_size=500):
    return torch.cat([function(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def is_masked(kind, config):
    """Masked models are scored on the hidden pixels: a whole-image PSNR counts the visible part too."""
    return kind == "mae" or (kind == "mcae" and config["mask_ratio"] > 0)


# -----------------------------------------------------------------------------
# measuring: a run's numbers into a plain dict, RUN_DIR/analysis.json. Inputs are corrupted here, by
# arguments (MAE.forward's mask_ratio, mcae.random_mask, add_noise), never by changing a model's config.


@torch.no_grad()
def masked_reconstruction(model, x, mask_ratio, mask_type="block", block_size=8, seed=0):
    """(input, reconstruction, mask) of the MAE or any conv/MLP AE at the mask setting given. The seed is
    fixed, so two models given the same setting see the same masks. The MAE hides its own patches."""
    torch.manual_seed(seed)
    if isinstance(model, MAE):
        _, out = model(x, mask_ratio=mask_ratio)
        return out["input"], out["recon"], out["mask"]
    block = block_size if mask_type == "block" else 1
    mask = random_mask(len(x), x.shape[2], x.shape[3], block, mask_ratio, x.device).to(x.dtype)  # (B, 1, H, W)
    inp = x * (1 - mask)
    return inp, in_batches(lambda batch: model.decoder(model.encoder(batch)), inp), mask


def measure_masking(run):
    """PSNR over all pixels and over the hidden ones at the assignment's ratios (and the run's own), and the
    hidden PSNR of leaving the holes black: most hidden MNIST pixels are background, so that scores high.
    A masked run is tested with its own kind of mask; a plain AE with both, to set it beside any MCAE."""
    config, x, rows = run.config, test_images(run), []
    ratios = sorted(set(MASK_RATIOS) | {config.get("mask_ratio", 0.5)} - {0})
    kinds = ([(config.get("mask_type", "patch"), config.get("block_size", config.get("patch_size")))]
             if is_masked(run.kind, config) else [("pixel", 8), ("block", 8)])
    for (mask_type, block), ratio in [(kind, ratio) for kind in kinds for ratio in ratios]:
        _, recon, mask = masked_reconstruction(run.model, x, ratio, mask_type, block)
        rows.append({"mask_type": mask_type, "mask_ratio": ratio, "block_size": block,
                     "psnr": metrics.psnr(recon, x).mean().item(),
                     "hidden_psnr": torch.nanmean(metrics.hidden_psnr(recon, x, mask)).item(),
                     "black_fill_hidden_psnr": torch.nanmean(metrics.hidden_psnr(torch.zeros_like(x), x, mask)).item()})
    return {"n_images": len(x), "settings": rows}


@torch.no_grad()
def psnr_against_noise(model, x, variances, seed=0):
    """Mean PSNR of decode(encode(x + noise)) and of the noisy input itself, for each noise variance:
    -> (recon_psnr, input_psnr), lists as long as variances. Noise is clipped to [0, 1], as in training."""
    recon_psnr, input_psnr = [], []
    for variance in variances:
        torch.manual_seed(seed)
        noisy = add_noise(x, math.sqrt(variance))
        recon = in_batches(lambda batch: model.decode(model.encode(batch)), noisy)
        recon_psnr.append(metrics.psnr(recon, x).mean().item())
        input_psnr.append(metrics.psnr(noisy, x).mean().item())
    return recon_psnr, input_psnr


@torch.no_grad()
def probe_under_noise(run, variances, n_train=5000):
    """Accuracy of a linear probe trained on the latents of clean training images (the first n_train),
    tested on the latents of test images with Gaussian noise of each variance, 0 first (C10, AE against
    DAE: how far noise moves a latent away from its class)."""
    train_f = in_batches(run.model.encode, to_float(run.data.train_x[:n_train]))
    x = test_images(run, len(run.data.test_x))
    accuracy = []
    for variance in [0.0] + variances:
        torch.manual_seed(0)  # the same noise, and the same probe, for every run
        test_f = in_batches(run.model.encode, add_noise(x, math.sqrt(variance)))
        accuracy.append(evaluate.linear_probe(train_f, run.data.train_y[:n_train], test_f, run.data.test_y,
                                           len(run.data.classes)))
    return {"n_train": len(train_f), "variances": [0.0] + variances, "accuracy": accuracy}


@torch.no_grad()
def measure_tsne(run, per_class, n_iter):
    """t-SNE of the latents of the same test images, clean and noisy (C10), with the cluster statistics
    of both (DvM's class radius), in the latent space and in the embedding."""
    idx = balanced_indices(run.data.test_y, per_class)
    x, labels = test_images(run, idx), run.data.test_y[idx.to(run.data.test_y.device)].cpu()
    std = run.config.get("noise_std", DEFAULT_NOISE_STD)  # the run's own noise, else variance 0.1
    torch.manual_seed(0)
    tsne = {"labels": labels, "per_class": torch.bincount(labels, minlength=len(run.data.classes)), "noise_std": std}
    for name, images in [("clean", x), ("noisy", add_noise(x, std))]:
        features = in_batches(run.model.encode, images)
        # perplexity must stay below the number of points: only tiny test sets get less than 30
        embedding = metrics.tsne_fast(features, n_iter=n_iter, perplexity=min(30.0, (len(x) - 1) / 3))
        tsne[name] = {"embedding": embedding, "latent": metrics.cluster_stats(features, labels.to(features.device)),
                      "tsne": metrics.cluster_stats(torch.from_numpy(embedding), labels)}
    return {**tsne, "latent_size": features.shape[1]}


@torch.no_grad()
def measure_worked_example(run):
    """PSNR and SSIM of the first test image step by step (DvM's sample calculation): SSIM's two factors,
    brightness and contrast-structure, and their product, each averaged over metrics.ssim's windows."""
    torch.manual_seed(0)
    x = test_images(run, 1)
    recon = run.model(x)[1]["recon"].float()
    mse = (recon - x).pow(2).mean().item()
    g, C = metrics.gaussian_window(), x.shape[1]
    maps = torch.cat([recon, x, recon * recon, x * x, recon * x], 1).double()  # (1, 5 C, H, W)
    for kernel in (g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)):  # window means: down the columns, along the rows
        maps = F.conv2d(maps, kernel.expand(5 * C, 1, -1, -1), groups=5 * C)
    mu_x, mu_y, e_xx, e_yy, e_xy = maps.chunk(5, 1)
    # windows without (co)variance have contrast-structure factor 1: what is left is the brightness factor
    brightness = metrics.ssim_formula(mu_x, mu_y, mu_x ** 2, mu_y ** 2, mu_x * mu_y)
    ssim = metrics.ssim_formula(mu_x, mu_y, e_xx, e_yy, e_xy)
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-10)), "brightness": brightness.mean().item(),
            "contrast_structure": (ssim / brightness).mean().item(), "ssim": ssim.mean().item()}


def plain(value):
    """Tensors and arrays inside value -> lists, so json can write it."""
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value


def measure(run, tsne_per_class, tsne_iters):
    """Every number the figures and report.md show of one run, computed once: a plain (json) dict with the
    run's name, kind, dataset, classes, config, epochs and results.json, and what is measured here: tsne
    (embeddings, cluster statistics), worked_example, noise (AE, DAE), masking (AE, MCAE, MAE)."""
    analysis = {"name": run.name, "kind": run.kind, "dataset": run.args["dataset"], "classes": run.data.classes,
                "config": run.config, "epochs": run.log[-1]["epoch"] if run.log else run.args["epochs"], "results": run.results,
                "tsne": measure_tsne(run, tsne_per_class, tsne_iters), "worked_example": measure_worked_example(run)}
    if run.kind in ("ae", "dae"):
        x = test_images(run)
        recon, noisy = psnr_against_noise(run.model, x, NOISE_VARIANCES)
        analysis["noise"] = {"n_images": len(x), "psnr": recon, "input_psnr": noisy,
                             "probe": probe_under_noise(run, NOISE_VARIANCES)}
    if run.kind in ("ae", "mcae", "mae"):
        analysis["masking"] = measure_masking(run)
    return plain(analysis)


# -----------------------------------------------------------------------------
# drawing helpers


def panels(n_cols, width=6, height=4, n_rows=1):
    fig = plt.figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel()


def save(fig, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)  # tight: no label is ever cut off
    plt.close(fig)
    print(f"wrote {path}")
    return path


HEAT_CMAP = plt.get_cmap("inferno")
HIDDEN_COLOUR = (0.2, 0.4, 0.8)  # hidden pixels of masked inputs


def heat_images(heat, heat_max=1.0):
    """Heatmaps (B, H, W) -> (B, 3, H, W) colours of HEAT_CMAP over 0 .. heat_max. Drawn on their own, not
    blended over the image, where bright strokes would look hot whatever the map says."""
    colours = HEAT_CMAP(np.clip(heat.detach().float().cpu().numpy() / heat_max, 0, 1))[..., :3]
    return torch.from_numpy(colours).permute(0, 3, 1, 2).float()


def mark_hidden(images, mask):
    """Masked inputs (B, C, H, W) with their hidden pixels (mask (B, 1, H, W) = 1) painted HIDDEN_COLOUR:
    the encoder saw zeros there, but black holes vanish into a black background. -> (B, 3, H, W)"""
    colour = torch.tensor(HIDDEN_COLOUR, device=images.device).view(1, 3, 1, 1)
    return images.expand(-1, 3, -1, -1) * (1 - mask) + colour * mask


def draw_grid(ax, rows, row_labels=(), col_labels=(), pad=2):
    """Rows of images (C, H, W) in [0, 1] as one mosaic with white gaps (make_grid) on one axes. The labels
    are the axes' tick labels, so the figure's layout makes room for them."""
    cells = [cell.detach().float().cpu().clamp(0, 1).expand(3, -1, -1) for row in rows for cell in row]
    ax.imshow(make_grid(cells, nrow=len(rows[0]), padding=pad, pad_value=1).permute(1, 2, 0).numpy())
    h, w = cells[0].shape[1:]
    ax.set_xticks([pad + j * (w + pad) + (w - 1) / 2 for j in range(len(col_labels))], col_labels)
    ax.set_yticks([pad + i * (h + pad) + (h - 1) / 2 for i in range(len(row_labels))], row_labels)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)


def grid_figure(rows, path, row_labels=(), col_labels=(), title="", heat_max=1.0, heat_label=None, cell=1.0):
    """A figure of one grid (draw_grid) with its title and, for heatmaps, a colour bar; saved to path."""
    fig, (ax,) = panels(1, (1.3 if row_labels else 0.2) + (1.0 if heat_label else 0) + cell * len(rows[0]),
                        0.5 + cell * len(rows) + (0.35 if col_labels else 0))
    draw_grid(ax, rows, row_labels, col_labels)
    if heat_label:
        bar = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, heat_max), cmap=HEAT_CMAP)
        fig.colorbar(bar, ax=ax, label=heat_label, shrink=0.8, aspect=30)
    fig.suptitle(title)
    return save(fig, path)


def finish_axes(ax, epochs=False):
    """A grid, whole epochs on the x axis, and the legend to the right, where it cannot hide a curve."""
    if epochs:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))


# -----------------------------------------------------------------------------
# per-run figures: each returns the path written, or None when the figure does not apply to the run


def figure_path(run, name):
    return os.path.join(run.path, "figures", f"{name}.png")


@torch.no_grad()
def plot_reconstructions(run, analysis):
    idx = class_indices(run.data.test_y, N_IMAGES)
    x = test_images(run, idx)
    torch.manual_seed(0)  # the same noise / masks every time the figure is drawn
    _, out = run.model(x)
    rows, labels, score = [list(x)], ["original"], f"PSNR {metrics.psnr(out['recon'], x).mean():.1f} dB"
    if "mask" in out and out["mask"].any():  # a ratio-0 MCAE hides nothing: no row for it
        rows, labels = rows + [list(mark_hidden(out["input"], out["mask"]))], labels + ["masked input\n(hidden: blue)"]
        score = f"PSNR on hidden pixels {torch.nanmean(metrics.hidden_psnr(out['recon'], x, out['mask'])):.1f} dB"
    elif "mask" not in out and not torch.equal(out["input"], x):  # AE and VAE see the image itself: no row
        rows, labels = rows + [list(out["input"])], labels + ["noisy input"]
    return grid_figure(rows + [list(out["recon"])], figure_path(run, "reconstructions"), labels + ["reconstruction"],
                       [run.data.classes[y] for y in run.data.test_y[idx.to(run.data.test_y.device)]],
                       f"{run.name}: reconstructions of test images ({score})")


def plot_tsne(run, analysis):
    tsne, classes = analysis["tsne"], run.data.classes
    labels, per_class = np.array(tsne["labels"]), [c for c in tsne["per_class"] if c]
    fig, axes = panels(2, 5, 4.8)
    for ax, name in zip(axes, ("clean", "noisy")):
        embedding = np.array(tsne[name]["embedding"])
        for c, class_name in enumerate(classes):
            ax.scatter(*embedding[labels == c].T, s=5, color=plt.cm.tab10(c % 10), label=class_name, alpha=0.8,
                       linewidths=0)
        noise = f" (noise std {tsne['noise_std']:.2f})" if name == "noisy" else ""
        ax.set(title=f"{name} test images{noise}\nsilhouette {tsne[name]['latent']['silhouette']:.2f} in the "
               "latent space", xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", markerscale=3, title="class")
    what = "CLS token" if run.kind == "mae" else "mean of q(z|x)" if run.kind == "vae" else "latent code"
    # the real count: a small test set may hold fewer than --tsne-per-class images of a class
    count = f"{max(per_class)}" if min(per_class) == max(per_class) else f"{min(per_class)} to {max(per_class)}"
    fig.suptitle(f"{run.name}: t-SNE of the {what}, {len(labels)} test images ({count} per class)")
    return save(fig, figure_path(run, "tsne"))


def jacobian_energy(model, x):
    """For each input pixel, how strongly it moves the latent code: sum over latent units d and channels c
    of (dz_d / dx_{c,h,w})^2, the pixel's share of the squared Frobenius norm of the Jacobian dz/dx.
    (B, C, H, W) -> (B, H, W). Each image's Jacobian whole by reverse mode (torch.func.jacrev): one
    backward pass per latent unit, batched, so the memory is D copies of one image."""
    def encode_one(image):  # (C, H, W) -> (D,)
        return model.encode(image.unsqueeze(0)).squeeze(0)

    return torch.stack([torch.func.jacrev(encode_one)(image).pow(2).sum(dim=(0, 1)) for image in x])  # (B, H, W)


def plot_saliency(run, analysis):
    if run.kind not in AE_FAMILY:
        return None
    x = test_images(run, class_indices(run.data.test_y, N_IMAGES))
    energy = jacobian_energy(run.model, x).detach()
    low, high = energy.amin(dim=(1, 2), keepdim=True), energy.amax(dim=(1, 2), keepdim=True)
    saliency = (energy - low) / (high - low).clamp(min=1e-12)  # each map to [0, 1]
    return grid_figure([list(x), list(heat_images(saliency))], figure_path(run, "saliency"), ["input", "saliency"],
                       title=f"{run.name}: saliency, sum over latent units of (d z / d pixel)^2",
                       heat_label="saliency (per image, 0-1)")


@torch.no_grad()
def cls_attention(model, x, mask_ratio=0.0, seed=0):
    """Last-layer attention of the CLS token to each patch the encoder saw, per head, at pixel size and
    scaled to each map's largest weight: -> (B, heads, H, W), and the mask (B, 1, H, W), 1 = hidden (no
    weight). The CLS's weight on itself is left out. Mask ratio 0 gives the maps of MAE.attention_maps."""
    B, _, H, W = x.shape
    p = model.config.patch_size
    torch.manual_seed(seed)
    tokens, mask, ids_restore = random_masking(model.embed(x), mask_ratio)  # (B, len_keep, D), (B, L), (B, L)
    h = model.with_cls(tokens)                                               # (B, 1 + len_keep, D)
    for block in model.blocks[:-1]:
        h = block(h)
    _, attn = model.blocks[-1](h, return_attention=True)                     # (B, heads, 1 + keep, 1 + keep)
    seen = attn[:, :, 0, 1:].float()                                         # (B, heads, len_keep): CLS's row
    # the kept patches come first in shuffled order: zeros for the hidden ones, then unshuffle
    weights = torch.cat([seen, seen.new_zeros(B, seen.shape[1], mask.shape[1] - seen.shape[2])], dim=2)
    weights = torch.gather(weights, 2, ids_restore[:, None].expand(-1, seen.shape[1], -1))  # (B, heads, L)
    maps, mask = (m.reshape(B, -1, H // p, W // p).repeat_interleave(p, 2).repeat_interleave(p, 3)
                  for m in (weights, mask))                                  # a patch's weight on its p x p pixels
    return maps / maps.amax(dim=(2, 3), keepdim=True), mask


def plot_attention(run, analysis, n=4):
    """Each image twice: whole, and masked at the training ratio as in pretraining (DvM)."""
    if run.kind != "mae":
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    ratio, rows = run.config["mask_ratio"], []
    for maps, mask in (cls_attention(run.model, x), cls_attention(run.model, x, ratio)):
        rows += [[image, *heat_images(image_maps)] for image, image_maps in zip(mark_hidden(x * (1 - mask), mask), maps)]
    return grid_figure(rows, figure_path(run, "attention"), ["whole"] * n + ["masked"] * n,
                       ["input"] + [f"head {h + 1}" for h in range(len(rows[0]) - 1)],
                       f"{run.name}: last-layer CLS attention per head, on the whole image and with {ratio:.0%} of "
                       "patches hidden (blue)", heat_label="attention / the map's largest", cell=1.3)


def plot_weights(run, analysis):
    """Every Linear / conv weight: no norm layers, no biases, no tokens (DvM)."""
    tensors = [(f"{name}.weight", m.weight.detach().float().cpu()) for name, m in run.model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    fig, axes = panels(min(6, len(tensors)), 2.3, 1.7, n_rows=math.ceil(len(tensors) / 6))
    for ax, (name, w) in zip(axes, tensors):
        ax.hist(w.flatten().numpy(), bins=60, color="tab:blue")
        ax.set_title(f"{name}\n{'x'.join(map(str, w.shape))}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    for ax in axes[len(tensors):]:
        ax.axis("off")
    fig.suptitle(f"{run.name}: weight histograms per layer (no norm layers, no biases)")
    return save(fig, figure_path(run, "weights"))


@torch.no_grad()
def plot_interpolation(run, analysis, steps=10):
    labels, classes = run.data.test_y.cpu(), run.data.classes
    pairs = [(a, b) for a, b in INTERPOLATION_PAIRS if (labels == a).any() and (labels == b).any()]
    if not hasattr(run.model, "decode") or not pairs:
        return None
    rows, t = [], torch.linspace(0, 1, steps)
    for a, b in pairs:
        images = test_images(run, torch.stack([torch.nonzero(labels == c)[0, 0] for c in (a, b)]))
        z = run.model.encode(images)  # (2, D)
        rows.append([images[0], *run.model.decode((1 - t[:, None]) * z[0] + t[:, None] * z[1]), images[1]])
    return grid_figure(rows, figure_path(run, "interpolation"), [f"{classes[a]}\nto {classes[b]}" for a, b in pairs],
                       ["image A"] + [f"t={v:.2f}" for v in t.tolist()] + ["image B"],
                       title=f"{run.name}: decoded (1-t) z_A + t z_B between two test images")


@torch.no_grad()
def plot_arithmetic(run, analysis):
    # your own folder: the first three classes, a - b + c
    names, labels = ARITHMETIC.get(run.args["dataset"], tuple(run.data.classes[:3])), run.data.test_y.cpu()
    ids = [run.data.classes.index(name) for name in names]
    if not hasattr(run.model, "decode") or len(ids) < 3 or not all((labels == c).any() for c in ids):
        return None
    # class means of the latents of (at most) the first 1000 test images of each class
    means = [in_batches(run.model.encode, test_images(run, torch.nonzero(labels == c).flatten()[:1000])).mean(0)
             for c in ids]
    decoded = run.model.decode(torch.stack(means + [means[0] - means[1] + means[2]]))
    return grid_figure([list(decoded)], figure_path(run, "arithmetic"),
                       col_labels=[f"mean {name}" for name in names] + [f"{names[0]} - {names[1]}\n+ {names[2]}"],
                       title=f"{run.name}: class-mean latent arithmetic", cell=1.6)


@torch.no_grad()
def plot_vae_samples(run, analysis, n=8):
    if run.kind != "vae":
        return None
    torch.manual_seed(0)
    samples = run.model.sample(n * n)
    return grid_figure([list(samples[i * n:(i + 1) * n]) for i in range(n)], figure_path(run, "vae_samples"),
                       title=f"{run.name}: {n * n} samples, z ~ N(0, I) decoded", cell=0.8)


def plot_error_heatmaps(run, analysis, n=6):
    if run.kind not in ("mcae", "mae"):
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    # the run's own kind of mask, as measure_masking (a ratio-0 MCAE: its 8x8 blocks)
    setting = analysis["masking"]["settings"][-1]
    scores = {s["mask_ratio"]: s for s in analysis["masking"]["settings"] if s["mask_type"] == setting["mask_type"]}
    shown = [masked_reconstruction(run.model, x, ratio, setting["mask_type"], setting["block_size"])
             for ratio in MASK_RATIOS]
    errors = [(recon - x).pow(2).mean(1) for _, recon, _ in shown]  # (n, H, W), averaged over channels
    heat_max = max(torch.stack(errors).quantile(0.995).item(), 1e-3)  # a few outliers should not wash out the rest
    rows, labels = [], []
    for ratio, (inp, recon, mask), error in zip(MASK_RATIOS, shown, errors):
        rows += [list(mark_hidden(inp, mask)), list(recon), list(heat_images(error, heat_max))]
        score = scores[ratio]  # beside what leaving the holes black scores: high where they hit background
        labels += [f"ratio {ratio}: input\n(hidden: blue)", "reconstruction", f"squared error\nhidden PSNR "
                   f"{score['hidden_psnr']:.1f} dB\n(black fill {score['black_fill_hidden_psnr']:.1f} dB)"]
    return grid_figure(rows, figure_path(run, "error_heatmaps"), labels,
                       title=f"{run.name}: per-pixel squared error at mask ratios {', '.join(map(str, MASK_RATIOS))}\n"
                             f"(PSNRs over the first {analysis['masking']['n_images']} test images)",
                       heat_max=heat_max, heat_label="squared error")


PER_RUN_FIGURES = {"reconstructions": plot_reconstructions, "tsne": plot_tsne, "saliency": plot_saliency,
                   "attention": plot_attention, "weights": plot_weights, "interpolation": plot_interpolation,
                   "arithmetic": plot_arithmetic, "vae_samples": plot_vae_samples, "error_heatmaps": plot_error_heatmaps}


# -----------------------------------------------------------------------------
# figures comparing runs


def draw_per_epoch(groups, title, path):
    """One panel per group {ylabel: [(run, colour, [(log key, line style)])]}, a curve per run and key."""
    fig, axes = panels(min(3, len(groups)), 5.5, n_rows=math.ceil(len(groups) / 3))  # at most 3 to a row
    for ax in axes[len(groups):]:
        ax.axis("off")
    for ax, (ylabel, members) in zip(axes, groups.items()):
        for run, colour, series in members:
            for i, (key, style) in enumerate(series):
                ax.plot([e["epoch"] for e in run.log], [e[key] for e in run.log], color=colour, linestyle=style,
                        marker="o", markersize=3, label=None if i else run.name)
        ax.set_ylabel(ylabel)
        finish_axes(ax, epochs=True)
    fig.suptitle(title)
    return save(fig, path)


def plot_psnr_per_epoch(runs, analyses, path):
    """A panel per dataset, masked models apart: their whole-image PSNR counts the pixels they were shown."""
    groups = {}
    for i, (run, a) in enumerate((run, a) for run, a in zip(runs, analyses) if run.log):
        ylabel, key = f"{a['dataset']}: test PSNR (dB), whole image", "psnr"
        if is_masked(a["kind"], a["config"]):  # hidden pixels alone, where the log has them
            key = "psnr_hidden" if "psnr_hidden" in run.log[0] else "psnr"
            ylabel = (f"{a['dataset']}: test PSNR (dB) of masked models, " +
                      ("hidden pixels" if key == "psnr_hidden" else "whole image\n(MAE: the visible patches copied)"))
        groups.setdefault(ylabel, []).append((run, f"C{i % 10}", [(key, "-")]))
    return draw_per_epoch(groups, "test PSNR per epoch", path) if groups else None


def plot_loss_per_epoch(runs, analyses, path):
    """A panel per kind of loss: a VAE's nats per image and an AE's MSE per pixel differ by orders of
    magnitude. The VAE's two terms get panels of their own (C10)."""
    groups = {}
    for i, run in enumerate(run for run in runs if run.log):
        loss = ("negative ELBO (nats / image)" if run.kind == "vae" else "MSE on hidden pixels"
                if run.kind == "mae" or run.config.get("loss_on") == "masked" else "MSE per pixel")
        terms = [("VAE: KL divergence (nats / image)", "kl"), ("VAE: -log p(x|z) (nats / image)", "recon_loss")]
        for ylabel, train_key, test_key in [(loss, "train_loss", "test_loss")] + [
                (ylabel, key, f"test_{key}") for ylabel, key in terms if key in run.log[0]]:
            groups.setdefault(ylabel, []).append((run, f"C{i % 10}", [(train_key, "-"), (test_key, "--")]))
    return draw_per_epoch(groups, "loss per epoch: train (solid) and test (dashed)", path) if groups else None


def plot_psnr_vs_noise(runs, analyses, path):
    """Left: every AE and DAE at each test noise variance. Right, with one run per training variance: each
    DAE at the variance it was trained with (the MLP report's PSNR against noise variance)."""
    tested = [a for a in analyses if "noise" in a]
    trained = {}
    for a in tested:
        if a["kind"] == "dae" and "psnr" in a["results"]:
            trained.setdefault(a["dataset"], []).append((a["config"]["noise_std"] ** 2, a["results"]["psnr"]))
    if not tested:
        return None
    fig, axes = panels(1 + bool(trained))
    for a in tested:
        axes[0].plot(NOISE_VARIANCES, a["noise"]["psnr"], marker="o", label=a["name"])
    for dataset, style in zip(dict.fromkeys(a["dataset"] for a in tested), ["--", ":", "-.", (0, (5, 1, 1, 1))]):
        axes[0].plot(NOISE_VARIANCES, next(a for a in tested if a["dataset"] == dataset)["noise"]["input_psnr"],
                     linestyle=style, color="gray", marker=".", label=f"noisy input ({dataset})")  # to beat
    axes[0].set_title(f"each run at every test noise, first {tested[0]['noise']['n_images']} test images")
    for dataset, points in trained.items():
        axes[1].plot(*zip(*sorted(points)), marker="o", label=dataset)
        axes[1].set_title("each DAE at the noise it was trained with, whole test set")
    for ax in axes:
        ax.set(xlabel="noise variance (std = sqrt(variance))", ylabel="PSNR (dB)", xticks=NOISE_VARIANCES)
        finish_axes(ax)
    fig.suptitle("denoising: reconstruction PSNR against input noise")
    return save(fig, path)


def best_psnr_per_latent(analyses):
    """MLP AEs and DAEs: {'<dataset>, noise std <s>': {latent size: (best test PSNR, its L1 weight)}}."""
    best = {}
    for a in analyses:
        if a["kind"] in ("ae", "dae") and a["config"]["arch"] == "mlp" and "psnr" in a["results"]:
            line = f"{a['dataset']}, noise std {a['config'].get('noise_std', 0):g}"
            point = best.setdefault(line, {}).get(a["config"]["latent_dim"])
            if point is None or a["results"]["psnr"] > point[0]:
                best[line][a["config"]["latent_dim"]] = (a["results"]["psnr"], a["config"]["l1"])
    return best


def plot_psnr_per_latent(runs, analyses, path):
    """The best test PSNR at each latent size over the L1 settings tried, one line per dataset and input
    noise, each point labelled with the L1 weight that won (the MLP report's figure 2)."""
    best = best_psnr_per_latent(analyses)
    if not any(len(points) > 1 for points in best.values()):
        return None  # one latent size: nothing to compare
    fig, (ax,) = panels(1, 7)
    for line, points in best.items():
        sizes = sorted(points)
        ax.plot(sizes, [points[d][0] for d in sizes], marker="o", label=line)
        for d in sizes:
            ax.annotate(f"L1 {points[d][1]:g}", (d, points[d][0]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    sizes = sorted({d for points in best.values() for d in points})
    ax.set(xscale="log", xlabel="latent size", ylabel="best test PSNR (dB) over L1 settings")
    ax.set_xticks(sizes, [str(d) for d in sizes])
    ax.minorticks_off()
    finish_axes(ax)
    fig.suptitle("MLP autoencoders: reconstruction against latent size")
    return save(fig, path)


def plot_mask_ratios(runs, analyses, path):
    """MCAE runs trained at different mask ratios (the plain AE: at 0), tested at the assignment's ratios,
    beside leaving the holes black: a panel per dataset and kind of mask (C10)."""
    groups = {(a["dataset"], a["config"]["mask_type"]): [] for a in analyses
              if a["kind"] == "mcae" and a["config"]["mask_ratio"] > 0}
    for (dataset, mask_type), members in groups.items():
        members += [(a, [s for s in a["masking"]["settings"] if s["mask_type"] == mask_type]) for a in analyses
                    if a["dataset"] == dataset and a["kind"] in ("ae", "mcae")]
    if not groups:
        return None
    fig, axes = panels(len(groups), 6.5)
    for ax, ((dataset, mask_type), members) in zip(axes, groups.items()):
        for a, tested in sorted((m for m in members if m[1]), key=lambda m: m[0]["config"].get("mask_ratio", 0)):
            ax.plot([s["mask_ratio"] for s in tested], [s["hidden_psnr"] for s in tested], marker="o",
                    label=f"{a['name']} (trained at {a['config'].get('mask_ratio', 0):g})")
        ax.plot([s["mask_ratio"] for s in tested], [s["black_fill_hidden_psnr"] for s in tested], color="gray",
                linestyle="--", label="holes left black")
        ax.set(title=f"{dataset}, {mask_type} masks", xlabel="test mask ratio", ylabel="PSNR on hidden pixels (dB)")
        finish_axes(ax)
    fig.suptitle(f"MCAE runs trained at different mask ratios, first {a['masking']['n_images']} test images")
    return save(fig, path)


@torch.no_grad()
def plot_vae_vs_ae(runs, analyses, path):
    for vae in (run for run in runs if run.kind == "vae"):
        # an AE run, or an MCAE run with nothing masked (the same model)
        ae = next((run for run in runs if run.args["dataset"] == vae.args["dataset"] and (
            run.kind == "ae" or (run.kind == "mcae" and run.config["mask_ratio"] == 0))), None)
        if ae is not None:
            x = test_images(vae, class_indices(vae.data.test_y, N_IMAGES))
            recons = [vae.model(x)[1]["recon"], ae.model(x)[1]["recon"]]
            labels = [f"{what} ({run.name})\nPSNR {metrics.psnr(recon, x).mean():.1f} dB"
                      for what, run, recon in zip(("VAE", "AE"), (vae, ae), recons)]
            return grid_figure([list(x)] + [list(r) for r in recons], path, ["original"] + labels,
                               title="VAE against AE reconstructions of the same test images")
    return None


def plot_three_levels(runs, analyses, path):
    """The masking tutorial's three levels from MCAE runs of one dataset: nothing hidden, random pixels,
    blocks (of several runs of a level, the most masked: the tutorial's ratio 0.5)."""
    by_dataset = {}
    for run in sorted((run for run in runs if run.kind == "mcae"), key=lambda run: run.config["mask_ratio"]):
        level = "identity" if run.config["mask_ratio"] == 0 else run.config["mask_type"]
        by_dataset.setdefault(run.args["dataset"], {})[level] = run
    levels = next((levels for levels in by_dataset.values() if len(levels) == 3), None)
    if levels is None:
        return None
    fig, axes = panels(1, 1.5 + N_IMAGES, 2.4, n_rows=3)
    for ax, (level, name) in zip(axes, [("identity", "1. identity"), ("pixel", "2. random pixels"),
                                        ("block", "3. blocks")]):
        run, config, results = levels[level], levels[level].config, levels[level].results
        torch.manual_seed(0)
        _, out = run.model(test_images(run, class_indices(run.data.test_y, N_IMAGES)))
        draw_grid(ax, [list(mark_hidden(out["input"], out["mask"])), list(out["recon"])],
                  ["input\n(hidden: blue)", "reconstruction"])
        size = f" of {config['block_size']}x{config['block_size']}" if level == "block" else ""
        ax.set_title(f"{name} ({run.name}): " + (
            f"nothing hidden, test PSNR {fmt(results.get('psnr'), 1)} dB" if level == "identity" else
            f"{config['mask_ratio']:.0%} hidden in {level}s{size}, test PSNR {fmt(results.get('psnr_hidden'), 1)} "
            "dB on hidden pixels"))
    fig.suptitle("three levels of reconstruction difficulty (MCAE)", fontweight="bold")
    return save(fig, path)


COMPARISON_FIGURES = {"psnr_per_epoch": plot_psnr_per_epoch, "loss_per_epoch": plot_loss_per_epoch,
                      "psnr_vs_noise": plot_psnr_vs_noise, "psnr_per_latent": plot_psnr_per_latent,
                      "mask_ratios": plot_mask_ratios, "vae_vs_ae": plot_vae_vs_ae,
                      "three_levels": plot_three_levels}


# -----------------------------------------------------------------------------
# report.md: from the analysis dicts alone


def fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,}" if digits is None else f"{value:.{digits}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""])


def best_reconstructions(analyses):
    """The best run of each group of runs whose PSNRs compare: one dataset, masked models apart, scored on
    the hidden pixels (the MAE's whole-image PSNR counts the patches it copied).
    -> {(dataset, masked): (analysis, results key)}"""
    best = {}
    for a in analyses:
        group = a["dataset"], is_masked(a["kind"], a["config"])
        key = "psnr_hidden" if group[1] else "psnr"
        if a["results"].get(key) is not None and (group not in best or a["results"][key] > best[group][0]["results"][key]):
            best[group] = (a, key)
    return best


def summary(analyses):
    """The best accuracy and the best reconstruction, each among runs that compare."""
    sentences = []
    for dataset in dict.fromkeys(a["dataset"] for a in analyses):
        for key, label in [("linear_acc", "linear-probe"), ("finetune_acc", "fine-tune")]:
            scored = [a for a in analyses if a["dataset"] == dataset and a["results"].get(key) is not None]
            if scored:
                top = max(scored, key=lambda a: a["results"][key])
                sentences.append(f"On {dataset}, the best {label} accuracy is {top['name']}'s ({top['results'][key]:.1%}).")
    for (dataset, masked), (top, key) in best_reconstructions(analyses).items():
        what, pixels = ("masked model", " on the hidden pixels") if masked else ("model given whole or noisy images", "")
        sentences.append(f"On {dataset}, the best reconstruction by a {what} is {top['name']}'s, "
                         f"{top['results'][key]:.2f} dB PSNR{pixels} on the test set.")
    return " ".join(sentences)


def runs_section(analyses):
    """The runs and the settings that tell them apart (the MLP report's architecture, latent size, L1, noise)."""
    rows = []
    for a in analyses:
        config, results = a["config"], a["results"]
        arch = (f"ViT patch {config['patch_size']}, depth {config['depth']}" if a["kind"] == "mae" else
                f"{config['arch']} " + "-".join(map(str, config["hidden" if config["arch"] == "mlp" else "channels"])))
        corruption = (f"noise std {config['noise_std']:.3g} (variance {config['noise_std'] ** 2:.2g})" if a["kind"] == "dae"
                      else f"{config.get('mask_type', 'patch')} mask {config['mask_ratio']}"
                      if is_masked(a["kind"], config) else "none")
        rows.append([a["name"], a["kind"], a["dataset"], arch, a["tsne"]["latent_size"], f"{config.get('l1', 0):g}",
                     corruption, fmt(results.get("train_size"), None), a["epochs"] or "–",
                     fmt(results.get("parameters"), None)])
    return ["## Runs", "", table(["run", "model", "dataset", "architecture", "latent size", "L1", "input corruption",
                                  "training images", "epochs", "parameters"], rows)]


def accuracy_section(analyses):
    """A column per protocol that ran in any of the runs (DvM's accuracy table)."""
    protocols = [(key, label) for key, label in [("linear_acc", "linear probe"), ("knn_acc", "k-NN"),
                                                 ("finetune_acc", "fine-tune")]
                 if any(key in a["results"] for a in analyses)]
    return ["## Classification accuracy (test set)", "", table(["run"] + [label for _, label in protocols], [
        [a["name"]] + [fmt(a["results"].get(key)) for key, _ in protocols] for a in analyses])] if protocols else []


def reconstruction_section(analyses):
    rows = [[a["name"], fmt(r.get("psnr"), 2), fmt(r.get("ssim")), fmt(r.get("mse"), 5), fmt(r.get("mae"), 5),
             # 99.9: metrics.psnr's 100 dB cap for an input equal to the image, not a measurement
             "clean" if r.get("psnr_input", 0) >= 99.9 else fmt(r.get("psnr_input"), 2), fmt(r.get("psnr_hidden"), 2)]
            for a in analyses for r in [a["results"]]]
    return ["## Reconstruction (test set)", "", "PSNR of input: the noisy or masked image the encoder saw against the "
            "original (clean: the image itself). Hidden PSNR: masked models, over the hidden pixels only. Mean abs. "
            "error: mean |reconstruction - original| per pixel.", "",
            table(["run", "PSNR (dB)", "SSIM", "MSE", "mean abs. error", "PSNR of input (dB)", "hidden PSNR (dB)"], rows)]


def noise_section(analyses):
    noisy = [a for a in analyses if "noise" in a]
    if not noisy:
        return []
    probe = noisy[0]["noise"]["probe"]
    return ["## PSNR (dB) against input noise", "", f"The first {noisy[0]['noise']['n_images']} test images, Gaussian "
            "noise clipped to [0, 1].", "", table(["run"] + [f"variance {v}" for v in NOISE_VARIANCES], [
                [a["name"]] + [fmt(v, 2) for v in a["noise"]["psnr"]] for a in noisy]), "",
            "## Classifying latents of noisy images", "", f"A linear probe trained on the latents of {probe['n_train']} "
            "clean training images, tested on the latents of every test image with noise added: how far noise moves "
            "a latent away from its class.", "", table(["run"] + [f"variance {v}" for v in probe["variances"]], [
                [a["name"]] + [fmt(v, 3) for v in a["noise"]["probe"]["accuracy"]] for a in noisy])]


def filling_section(analyses):
    """What training with masks buys (C10): every mask setting of every run, a setting's rows together, so
    an MCAE sits beside the plain AEs given the very same masked images."""
    rows = sorted(((a["dataset"], s["mask_type"], s["block_size"], s["mask_ratio"], a["name"]), s)
                  for a in analyses if "masking" in a for s in a["masking"]["settings"])
    n = next((a["masking"]["n_images"] for a in analyses if "masking" in a), 0)
    return ["## Filling in hidden pixels", "", f"The first {n} test images, masked the same way for every model: "
            "MCAE and MAE runs beside the plain AEs (AE runs, MCAE runs at mask ratio 0). Black fill: the hidden PSNR "
            "of leaving the holes black, what a model that learned nothing scores (high where the holes fall on "
            "background).", "", table(["run", "dataset", "mask", "PSNR (dB)", "hidden PSNR (dB)",
                                       "black fill hidden PSNR (dB)"], [
                [name, dataset, f"{kind} {ratio}" + (f" ({block}x{block})" if kind == "block" else ""),
                 fmt(s["psnr"], 2), fmt(s["hidden_psnr"], 2), fmt(s["black_fill_hidden_psnr"], 2)]
                for (dataset, kind, block, ratio, name), s in rows])] if rows else []


def cluster_section(analyses):
    """DvM's cluster radius per class, in the t-SNE embedding and in the latent space; a table per dataset."""
    lines = ["## Clusters", "",
             "Radius of a class: the mean distance of its points to their centre (as the DAE-vs-MAE study), over the "
             "clean test images of the t-SNE figure. In the 2-D t-SNE embedding it is in t-SNE units; in "
             "the latent space it is divided by the mean distance of all points to the overall centre, "
             "so models with latents of different sizes and scales compare fairly. Smaller is tighter; "
             "a higher silhouette (-1 .. 1) means better separated classes.", ""]
    for dataset in dict.fromkeys(a["dataset"] for a in analyses):
        members = [a for a in analyses if a["dataset"] == dataset]
        for title, source, key in [("t-SNE radius", "tsne", "radius"), ("latent radius / spread", "latent",
                                                                         "relative_radius")]:
            stats = [a["tsne"]["clean"][source] for a in members]
            # cluster_stats stops at the largest label present: a class past it has no radius
            rows = [[name] + [fmt(s[key][c] if c < len(s[key]) else None, 3) for s in stats]
                    for c, name in enumerate(members[0]["classes"])]
            rows += [["**mean**"] + [fmt(float(np.nanmean(s[key])), 3) for s in stats],
                     ["**silhouette**"] + [fmt(s["silhouette"], 3) for s in stats]]
            lines += [f"### {title}, {dataset}", "", table(["class"] + [a["name"] for a in members], rows)]
    return lines


def write_report(analyses, out_dir, figures=None):
    """report.md from the analysis dicts alone (as in analysis.json); figures: {label: {name: path}} to link."""
    worked = [[a["name"]] + [fmt(a["worked_example"][key], digits) for key, digits in
                             [("mse", 5), ("psnr", 2), ("brightness", 4), ("contrast_structure", 4), ("ssim", 4)]]
              for a in analyses]
    sections = [runs_section, accuracy_section, reconstruction_section, noise_section, filling_section, cluster_section]
    lines = ["# nanoAE report", "", summary(analyses), ""] + sum((section(analyses) for section in sections), []) + [
        "## PSNR and SSIM worked through: the first test image", "",
        "PSNR = 10 log10(1 / MSE) for pixels in [0, 1]. SSIM compares 11x11 Gaussian windows (sigma 1.5) of the "
        "reconstruction x and the original y: per window a brightness factor (2 mu_x mu_y + C1) / (mu_x^2 + "
        "mu_y^2 + C1) times a contrast-structure factor (2 cov_xy + C2) / (var_x + var_y + C2), C1 = 0.01^2, "
        "C2 = 0.03^2, averaged over the windows. The columns give each factor's mean; SSIM is the mean of their "
        "product, near but not equal to the product of the means.", "",
        table(["run", "MSE", "PSNR = 10 log10(1/MSE) (dB)", "brightness", "contrast-structure", "SSIM"], worked)]
    if figures:  # relative to report.md: also the list of what was drawn
        lines += ["## Figures", ""] + [f"- {label}: " + ", ".join(
            f"[{name}]({os.path.relpath(path, out_dir)})" for name, path in by_name.items())
            for label, by_name in figures.items()]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by train.py")
    p.add_argument("--out", help="where report.md and the figures comparing runs go (default: the parent of "
                   "the first RUN_DIR)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="(default: cuda if available, else cpu)")
    p.add_argument("--data-dir", help="where torchvision finds the datasets (default: each run's own --data-dir)")
    p.add_argument("--threads", type=train.positive_int, default=1, help="CPU threads for torch; the tensors "
                   "here are small, so more threads mostly wait on each other (default: 1)")
    p.add_argument("--tsne-per-class", type=train.positive_int, default=200,
                   help="test images per class in the t-SNE figures and cluster tables (default: 200)")
    p.add_argument("--tsne-iters", type=train.positive_int, default=1000,
                   help="t-SNE iterations, the first 250 with early exaggeration (default: 1000)")
    args = p.parse_args(argv)
    args.out = args.out or os.path.dirname(os.path.abspath(args.run_dirs[0]))
    return args


def main(argv=None):
    """Measure each run into RUN_DIR/analysis.json and draw its figures, then compare the runs and write
    report.md. Returns the runs, their analyses and the figures drawn ({run name: {figure: path}})."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        t0 = time.time()
        runs = load_runs(args.run_dirs, args.device, args.data_dir)
        print(f"loaded {len(runs)} run(s) in {time.time() - t0:.1f}s: {', '.join(run.name for run in runs)}")
        analyses, figures = [], {}
        for run in runs:
            print(f"{run.name}: {evaluate.dead_run_warning(run.results) or 'measuring'}")
            analyses.append(measure(run, args.tsne_per_class, args.tsne_iters))
            with open(os.path.join(run.path, "analysis.json"), "w") as f:
                json.dump(analyses[-1], f, indent=1)
            figures[run.name] = {name: path for name, plot in PER_RUN_FIGURES.items() if (path := plot(run, analyses[-1]))}
        figures["comparing runs"] = {name: path for name, plot in COMPARISON_FIGURES.items() if (
            path := plot(runs, analyses, os.path.join(args.out, "figures", f"{name}.png")))}
        write_report(analyses, args.out, figures)
        print(f"done in {time.time() - t0:.1f}s")
    finally:
        torch.set_num_threads(threads)  # main() called from Python (tests) leaves the process as it was
    return runs, analyses, figures


if __name__ == "__main__":
    try:
        main()
    except (AnalyzeError, RunError, OSError) as e:  # OSError: an unwritable --out, an unreadable file
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{getattr(e, 'strerror', None) or e}", file=sys.stderr)
        sys.exit(1)
