"""
Every figure and table of the four autoencoder studies nanoAE reproduces, drawn from finished runs.
In brackets, the studies that show each one: DvM = the DAE-vs-MAE study (MNIST, CIFAR-10),
Mask = the masking tutorial (three levels of masking), C10 = the CIFAR-10 AE/DAE/VAE/MCAE assignment,
MLP = the report on MLP denoising AEs (MNIST, Fashion-MNIST).

    python analyze.py out/ae-fashion-mnist out/dae-fashion-mnist out/mae-fashion-mnist

Per run, in RUN_DIR/figures/:
    reconstructions.png   original / what the encoder saw / reconstruction        (DvM, C10, MLP)
    curves.png            train and test loss, PSNR, and for the VAE KL and reconstruction loss, per epoch
    tsne.png              t-SNE of the latents of clean and of noisy test images  (DvM, C10)
    saliency.png          AE, DAE, VAE, MCAE: how strongly each pixel moves the latent code (DvM)
    attention.png         MAE: last-layer CLS attention of every head              (DvM)
    weights.png           histogram of every weight tensor, no norm layers, no biases (DvM)
    interpolation.png     models with a decoder: walking the latent line between two images (C10)
    arithmetic.png        models with a decoder: class-mean latent arithmetic, e.g. dog - cat + bird (C10)
    vae_samples.png       VAE: images decoded from the prior                       (C10)
    error_heatmaps.png    MCAE, MAE: per-pixel squared error at mask ratios 0.1, 0.3, 0.5 (C10)

Comparing the runs, in --out (default: the parent of the first run dir):
    figures/psnr_per_epoch.png, figures/loss_per_epoch.png   (C10, MLP)
    figures/psnr_vs_noise.png    AE and DAE runs: PSNR against the variance of the input noise (MLP)
    figures/vae_vs_ae.png        a VAE and an AE run of one dataset: originals and both reconstructions (C10)
    figures/three_levels.png     MCAE runs hiding nothing, random pixels and blocks (Mask)
    report.md                    accuracy, reconstruction and cluster tables, links to every figure (DvM, C10)

Everything is computed on a fixed subset of the test set (a few images per figure, a few hundred per
class for t-SNE), so a handful of runs takes a few minutes on a CPU.
"""
import argparse
import contextlib
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
from matplotlib.ticker import MaxNLocator

import metrics
import train
from data import Data, RunError, load_data, to_float
from mcae import hidden_psnr

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "figure.titlesize": 11, "legend.fontsize": 8})

N_IMAGES = 8                                  # test images per image figure
NOISE_VARIANCES = [0.01, 0.02, 0.05, 0.1]     # the MLP report's noise levels, as variances
MASK_RATIOS = [0.1, 0.3, 0.5]                 # the CIFAR-10 assignment's MCAE mask ratios
DEFAULT_NOISE_STD = 0.316                     # t-SNE of noisy inputs for models trained without noise: variance 0.1
AE_FAMILY = ("ae", "dae", "vae", "mcae")      # encoders that saliency maps are drawn for
# class-mean latent arithmetic a - b + c, by class name: the CIFAR-10 assignment's dog - cat + bird, and
# one triple in the same spirit for the other datasets (what b lacks and a has, added to c)
ARITHMETIC = {
    "mnist": ("7", "1", "0"),
    "fashion-mnist": ("Ankle boot", "Sneaker", "Sandal"),
    "cifar10": ("dog", "cat", "bird"),
    "cifar10-jitter": ("dog", "cat", "bird"),
}
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
    log: list               # one dict per epoch (log.jsonl)
    results: dict           # results.json (empty if the run stopped before writing it)
    data: Data        # the run's dataset
    figures: dict = dataclasses.field(default_factory=dict)  # figure name -> path written
    stats: dict = dataclasses.field(default_factory=dict)    # numbers computed here, for report.md

    @property
    def figure_dir(self):
        return os.path.join(self.path, "figures")


def read_json_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_runs(run_dirs, device, data_dir=None):
    """Load every run, its log and results, and its dataset (each dataset read once, shared by runs)."""
    for run_dir in run_dirs:  # check them all first: a typo should not cost the time of loading the rest
        if not os.path.isfile(os.path.join(run_dir, "ckpt.pt")):
            raise AnalyzeError(f"{run_dir} has no ckpt.pt: give run directories written by train.py")
    names = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    datasets, runs = {}, []
    for run_dir, name in zip(run_dirs, names):
        if names.count(name) > 1:  # out/a/dae and out/b/dae: keep them apart in tables and legends
            name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(run_dir))), name)
        model, args, ckpt = train.load_run(run_dir, device)
        dataset = args["dataset"]
        # the jittered CIFAR-10 test set is drawn from the run's seed, so it is part of the key
        key = (dataset, args["seed"] if dataset == "cifar10-jitter" else 0)
        if key not in datasets:
            datasets[key] = load_data(dataset, data_dir or args["data_dir"], device, seed=args["seed"])
        results_path = os.path.join(run_dir, "results.json")
        results = json.load(open(results_path)) if os.path.exists(results_path) else {}
        runs.append(Run(name, run_dir, model, ckpt["model_name"], args,
                        read_json_lines(os.path.join(run_dir, "log.jsonl")), results, datasets[key]))
    return runs


def class_indices(labels, n):
    """Indices of n test images, one class after another (0, 1, 2, ...), so a row shows every class."""
    labels = labels.cpu()
    by_class = [torch.nonzero(labels == c).flatten().tolist() for c in range(int(labels.max()) + 1)]
    picked, rank = [], 0
    while len(picked) < n and rank < len(labels):
        for members in by_class:
            if rank < len(members) and len(picked) < n:
                picked.append(members[rank])
        rank += 1
    return torch.tensor(picked, dtype=torch.long)


def balanced_indices(labels, per_class):
    """The first per_class test images of every class (fewer where a class has fewer)."""
    labels = labels.cpu()
    chosen = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(int(labels.max()) + 1)]
    return torch.cat(chosen)


def test_images(run, idx):
    """Test images idx of the run's dataset as floats in [0, 1] on the run's device: (n, C, H, W)."""
    return to_float(run.data.test_x[idx.to(run.data.test_x.device)])


def noise_std(run):
    """The run's own training noise, or variance 0.1 for models trained without noise."""
    return getattr(run.model.config, "noise_std", DEFAULT_NOISE_STD)


def add_noise(x, std):
    return (x + std * torch.randn_like(x)).clamp(0, 1)  # clipped, as dae.py: still an image


@torch.no_grad()
def encode_all(model, x, batch_size=500):
    return torch.cat([model.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


# -----------------------------------------------------------------------------
# drawing: one helper for grids of images and heatmaps, used by every image figure


def new_figure(width, height):
    return plt.figure(figsize=(width, height), layout="constrained")


def save(fig, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)  # tight: no label is ever cut off
    plt.close(fig)
    print(f"wrote {path}")
    return path


HEAT_CMAP = plt.get_cmap("inferno")
OVERLAY_ALPHA = 0.6  # heatmaps over images: enough colour to read the map, enough image to see where it lies
HIDDEN_COLOUR = (0.2, 0.4, 0.8)  # hidden pixels of masked inputs


def image_pixels(image):
    """An image tensor (C, H, W) in [0, 1], 1 or 3 channels -> (H, W, 3) numpy, gray repeated for 1 channel."""
    image = image.detach().float().cpu().clamp(0, 1)
    return image.expand(3, -1, -1).permute(1, 2, 0).numpy()


def heat_pixels(heat, heat_max):
    """A heatmap (H, W) -> (H, W, 3) colours of HEAT_CMAP over 0 .. heat_max."""
    return HEAT_CMAP(np.clip(heat.detach().float().cpu().numpy() / heat_max, 0, 1))[..., :3]


def mark_hidden(images, mask):
    """Masked inputs (B, C, H, W) with their hidden pixels (mask (B, 1, H, W) = 1) painted HIDDEN_COLOUR:
    the encoder saw zeros there, but black holes vanish into a black background. -> (B, 3, H, W)"""
    colour = torch.tensor(HIDDEN_COLOUR, device=images.device).view(1, 3, 1, 1)
    return images.expand(-1, 3, -1, -1) * (1 - mask) + colour * mask


def cell_pixels(cell, heat_max):
    """A cell is an image (C, H, W), a heatmap (H, W), or a pair (image, heatmap): a heatmap over the image."""
    if isinstance(cell, tuple):
        image, heat = cell
        gray = image_pixels(image).mean(axis=2, keepdims=True)  # colour belongs to the heatmap
        return (1 - OVERLAY_ALPHA) * gray + OVERLAY_ALPHA * heat_pixels(heat, heat_max)
    return image_pixels(cell) if cell.ndim == 3 else heat_pixels(cell, heat_max)


def draw_grid(ax, rows, row_labels=None, col_labels=None, heat_max=1.0, gap=2):
    """Draw rows of cells (see cell_pixels; None leaves a cell empty) on one axes, as one mosaic image
    with white gaps: a single imshow instead of an axes per cell keeps many grids fast to draw.
    Row and column labels are the axis tick labels, so the figure's layout makes room for them."""
    h, w = next(c for row in rows for c in row if c is not None)[-1].shape[-2:]
    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    mosaic = np.ones((n_rows * (h + gap) - gap, n_cols * (w + gap) - gap, 3))
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if cell is not None:
                mosaic[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = cell_pixels(cell, heat_max)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([j * (w + gap) + (w - 1) / 2 for j in range(len(col_labels or []))], col_labels or [])
    ax.set_yticks([i * (h + gap) + (h - 1) / 2 for i in range(len(row_labels or []))], row_labels or [])
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def heat_colorbar(fig, ax, label, heat_max):
    bar = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, heat_max), cmap=HEAT_CMAP)
    fig.colorbar(bar, ax=ax, label=label, shrink=0.8, aspect=30)


def grid_figure(rows, path, row_labels=None, col_labels=None, title=None, heat_max=1.0, heat_label=None,
                cell=1.0):
    """A figure holding one grid (draw_grid) with its title and, for heatmaps, a colour bar; saved to path."""
    n_cols = max(len(row) for row in rows)
    label_width = 1.3 if row_labels else 0.2
    bar_width = 1.0 if heat_label else 0
    fig = new_figure(label_width + bar_width + cell * n_cols, 0.5 + cell * len(rows) + (0.35 if col_labels else 0))
    ax = fig.subplots()
    draw_grid(ax, rows, row_labels, col_labels, heat_max)
    if heat_label:
        heat_colorbar(fig, ax, heat_label, heat_max)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def legend_beside(ax):
    """The legend to the right of the plot, where it cannot hide a curve."""
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))


def epoch_axis(ax):
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


# -----------------------------------------------------------------------------
# per-run figures: each returns the path written, or None when the figure does not apply to the run


@torch.no_grad()
def plot_reconstructions(run):
    idx = class_indices(run.data.test_y, N_IMAGES)
    x = test_images(run, idx)
    torch.manual_seed(0)  # the same noise / masks every time the figure is drawn
    _, out = run.model(x)
    rows, labels = [list(x)], ["original"]
    if "mask" in out:
        rows.append(list(mark_hidden(out["input"], out["mask"])))
        labels.append("masked input\n(hidden: blue)")
    elif not torch.equal(out["input"], x):  # AE and VAE see the image itself: no row to add
        rows.append(list(out["input"]))
        labels.append("noisy input")
    rows.append(list(out["recon"]))
    labels.append("reconstruction")
    psnr = metrics.psnr(out["recon"], x).mean().item()
    return grid_figure(rows, os.path.join(run.figure_dir, "reconstructions.png"), labels,
                       col_labels=[run.data.classes[y] for y in run.data.test_y[idx.to(run.data.test_y.device)]],
                       title=f"{run.name}: reconstructions of test images (PSNR {psnr:.1f} dB)")


def loss_description(run):
    """What the run's loss measures, for axis labels (the models' losses are on different scales)."""
    if run.kind == "vae":
        return "negative ELBO (nats / image)"
    if run.kind == "mae" or getattr(run.model.config, "loss_on", "all") == "masked":
        return "MSE on hidden pixels"
    return "MSE per pixel"


def plot_curves(run):
    if not run.log:
        return None
    epochs = [e["epoch"] for e in run.log]
    panels = [("loss", loss_description(run), [("train", "train_loss"), ("test", "test_loss")]),
              ("test PSNR", "PSNR (dB)", [("test", "psnr")])]
    if "kl" in run.log[0]:  # the VAE's two terms of the loss (C10)
        panels += [("KL divergence", "KL (nats / image)", [("train", "kl"), ("test", "test_kl")]),
                   ("reconstruction loss", "-log p(x|z) (nats / image)",
                    [("train", "recon_loss"), ("test", "test_recon_loss")])]
    fig = new_figure(3.6 * len(panels), 3.2)
    for ax, (title, ylabel, series) in zip(fig.subplots(1, len(panels)), panels):
        for label, key in series:
            if key in run.log[0]:
                ax.plot(epochs, [e[key] for e in run.log], marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        epoch_axis(ax)
        if len(series) > 1:
            ax.legend()
    fig.suptitle(f"{run.name}: training curves")
    return save(fig, os.path.join(run.figure_dir, "curves.png"))


def scatter_classes(ax, embedding, labels, classes):
    colours = plt.cm.tab10(np.arange(len(classes)) % 10)
    for c, name in enumerate(classes):
        points = embedding[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=5, color=colours[c], label=name, alpha=0.8, linewidths=0)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def plot_tsne(run, per_class, n_iter):
    """t-SNE of the latents of the same test images, clean and noisy (C10); keeps the cluster
    statistics of the clean latents for the report (DvM's class radius)."""
    idx = balanced_indices(run.data.test_y, per_class)
    x = test_images(run, idx)
    labels = run.data.test_y[idx.to(run.data.test_y.device)].cpu()
    std = noise_std(run)
    torch.manual_seed(0)
    panels = [("clean test images", encode_all(run.model, x)),
              (f"noisy test images (noise std {std:.2f})", encode_all(run.model, add_noise(x, std)))]
    fig = new_figure(10, 4.8)
    axes = fig.subplots(1, 2)
    for i, (ax, (title, features)) in enumerate(zip(axes, panels)):
        # perplexity must stay below the number of points: only tiny test sets get less than 30
        embedding = metrics.tsne(features, n_iter=n_iter, perplexity=min(30.0, (len(x) - 1) / 3))
        latent_stats = metrics.cluster_stats(features, labels.to(features.device))
        ax.set_title(f"{title}\nsilhouette {latent_stats['silhouette']:.2f} in the latent space")
        scatter_classes(ax, embedding, labels.numpy(), run.data.classes)
        if i == 0:  # the report's cluster tables: clean inputs
            run.stats["tsne"] = metrics.cluster_stats(torch.from_numpy(embedding), labels)
            run.stats["latent"] = latent_stats
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", markerscale=3,
               title="class")
    what = "CLS token" if run.kind == "mae" else "mean of q(z|x)" if run.kind == "vae" else "latent code"
    fig.suptitle(f"{run.name}: t-SNE of the {what}, {per_class} test images per class")
    return save(fig, os.path.join(run.figure_dir, "tsne.png"))


def jacobian_energy(model, x):
    """For each input pixel, how strongly it moves the latent code: sum over latent units d and
    channels c of (dz_d / dx_{c,h,w})^2, the pixel's share of the squared Frobenius norm of the
    Jacobian dz/dx. (B, C, H, W) -> (B, H, W).

    The Jacobian of one image is computed whole by reverse mode, one backward pass per latent unit,
    batched (torch.func.jacrev); an image at a time keeps the memory at D copies of one image.
    """
    def encode_one(image):  # (C, H, W) -> (D,)
        return model.encode(image.unsqueeze(0)).squeeze(0)

    maps = []
    for image in x:
        jacobian = torch.func.jacrev(encode_one)(image)  # (D, C, H, W)
        maps.append(jacobian.pow(2).sum(dim=(0, 1)))     # (H, W)
    return torch.stack(maps)


def normalise_per_image(maps):
    """Min-max scale each map of (B, H, W) to [0, 1]."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-12)


def plot_saliency(run):
    if run.kind not in AE_FAMILY:
        return None
    x = test_images(run, class_indices(run.data.test_y, N_IMAGES))
    saliency = normalise_per_image(jacobian_energy(run.model, x).detach())
    rows = [list(x), list(zip(x, saliency))]
    return grid_figure(rows, os.path.join(run.figure_dir, "saliency.png"), ["input", "saliency"],
                       title=f"{run.name}: saliency, sum over latent units of (d z / d pixel)^2",
                       heat_label="saliency (per image, 0-1)")


@torch.no_grad()
def plot_attention(run, n=4):
    if run.kind != "mae":
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    maps = run.model.attention_maps(x)  # (n, heads, H/p, W/p), each sums to 1 over the patches
    p = run.model.config.patch_size
    # nearest upsampling: one attention weight per patch, drawn as the patch it belongs to
    maps = maps.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)  # (n, heads, H, W)
    maps = maps / maps.amax(dim=(2, 3), keepdim=True)  # each map to [0, 1] of its own largest weight
    heads = maps.shape[1]
    rows = [[image] + [(image, maps[i, h]) for h in range(heads)] for i, image in enumerate(x)]
    return grid_figure(rows, os.path.join(run.figure_dir, "attention.png"),
                       col_labels=["image"] + [f"head {h + 1}" for h in range(heads)],
                       title=f"{run.name}: last-layer CLS attention per head, whole image visible",
                       heat_label="attention / the map's largest", cell=1.3)


def weight_tensors(model):
    """(name, tensor) of every Linear / conv weight: no norm layers, no biases, no tokens."""
    layers = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    return [(f"{name}.weight", m.weight.detach().float().cpu()) for name, m in model.named_modules()
            if isinstance(m, layers)]


def plot_weights(run):
    tensors = weight_tensors(run.model)
    n_cols = min(6, len(tensors))
    n_rows = math.ceil(len(tensors) / n_cols)
    fig = new_figure(2.3 * n_cols, 1.7 * n_rows + 0.5)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (name, w) in zip(axes, tensors):
        ax.hist(w.flatten().numpy(), bins=60, color="tab:blue")
        ax.set_title(f"{name}\n{'x'.join(map(str, w.shape))}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    for ax in axes[len(tensors):]:
        ax.axis("off")
    fig.suptitle(f"{run.name}: weight histograms per layer (no norm layers, no biases)")
    return save(fig, os.path.join(run.figure_dir, "weights.png"))


@torch.no_grad()
def plot_interpolation(run, steps=10):
    if not hasattr(run.model, "decode"):
        return None
    labels, classes = run.data.test_y.cpu(), run.data.classes
    rows, row_labels = [], []
    for a, b in INTERPOLATION_PAIRS:
        if not ((labels == a).any() and (labels == b).any()):
            continue
        pair = test_images(run, torch.stack([torch.nonzero(labels == c)[0, 0] for c in (a, b)]))
        z = run.model.encode(pair)  # (2, D)
        t = torch.linspace(0, 1, steps, device=z.device)[:, None]
        decoded = run.model.decode((1 - t) * z[0] + t * z[1])  # (steps, C, H, W)
        rows.append([pair[0], *decoded, pair[1]])
        row_labels.append(f"{classes[a]}\nto {classes[b]}")
    if not rows:
        return None
    col_labels = ["image A"] + [f"t={v:.2f}" for v in torch.linspace(0, 1, steps).tolist()] + ["image B"]
    return grid_figure(rows, os.path.join(run.figure_dir, "interpolation.png"), row_labels, col_labels,
                       title=f"{run.name}: decoded (1-t) z_A + t z_B between two test images")


@torch.no_grad()
def plot_arithmetic(run):
    if not hasattr(run.model, "decode"):
        return None
    names = ARITHMETIC[run.args["dataset"]]
    labels = run.data.test_y.cpu()
    ids = [run.data.classes.index(name) for name in names]
    if not all((labels == c).any() for c in ids):
        return None
    # class means of the latents of (at most) the first 1000 test images of each class
    means = [encode_all(run.model, test_images(run, torch.nonzero(labels == c).flatten()[:1000])).mean(0)
             for c in ids]
    result = means[0] - means[1] + means[2]
    decoded = run.model.decode(torch.stack(means + [result]))
    col_labels = [f"mean {names[0]}", f"mean {names[1]}", f"mean {names[2]}",
                  f"{names[0]} - {names[1]}\n+ {names[2]}"]
    return grid_figure([list(decoded)], os.path.join(run.figure_dir, "arithmetic.png"), col_labels=col_labels,
                       title=f"{run.name}: class-mean latent arithmetic", cell=1.6)


@torch.no_grad()
def plot_vae_samples(run, n=8):
    if run.kind != "vae":
        return None
    torch.manual_seed(0)
    samples = run.model.sample(n * n)
    rows = [list(samples[i * n:(i + 1) * n]) for i in range(n)]
    return grid_figure(rows, os.path.join(run.figure_dir, "vae_samples.png"),
                       title=f"{run.name}: {n * n} samples, z ~ N(0, I) decoded", cell=0.8)


@contextlib.contextmanager
def mask_settings(model, **settings):
    """Change a masked model's mask settings for a while: MCAE.corrupt and MAE.forward read them from
    model.config on every call."""
    saved = {name: getattr(model.config, name) for name in settings}
    for name, value in settings.items():
        setattr(model.config, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(model.config, name, value)


@torch.no_grad()
def masked_reconstruction(model, x, **settings):
    """Input, reconstruction and mask of a masked model under other mask settings than it was trained
    with. The seed is fixed, so two models given the same settings see the same masks."""
    with mask_settings(model, **settings):
        torch.manual_seed(0)
        _, out = model(x)
    return out["input"], out["recon"], out["mask"]


@torch.no_grad()
def plot_error_heatmaps(run, n=6):
    if run.kind not in ("mcae", "mae"):
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    rows, row_labels, errors = [], [], []
    for ratio in MASK_RATIOS:
        inp, recon, mask = masked_reconstruction(run.model, x, mask_ratio=ratio)
        error = (recon - x).pow(2).mean(1)  # (n, H, W), averaged over channels
        psnr = torch.nanmean(hidden_psnr(recon, x, mask)).item()
        rows += [list(mark_hidden(inp, mask)), list(recon), list(error)]
        row_labels += [f"ratio {ratio}: input\n(hidden: blue)", "reconstruction",
                       f"squared error\nhidden PSNR {psnr:.1f} dB"]
        errors.append(error)
    heat_max = max(torch.stack(errors).quantile(0.995).item(), 1e-3)  # a few outliers should not wash out the rest
    return grid_figure(rows, os.path.join(run.figure_dir, "error_heatmaps.png"), row_labels,
                       title=f"{run.name}: per-pixel squared error at mask ratios {', '.join(map(str, MASK_RATIOS))}",
                       heat_max=heat_max, heat_label="squared error")


def draw_run_figures(run, args):
    """Every per-run figure that applies to the run, recorded in run.figures."""
    figures = {
        "reconstructions": lambda: plot_reconstructions(run),
        "curves": lambda: plot_curves(run),
        "tsne": lambda: plot_tsne(run, args.tsne_per_class, args.tsne_iters),
        "saliency": lambda: plot_saliency(run),
        "attention": lambda: plot_attention(run),
        "weights": lambda: plot_weights(run),
        "interpolation": lambda: plot_interpolation(run),
        "arithmetic": lambda: plot_arithmetic(run),
        "vae_samples": lambda: plot_vae_samples(run),
        "error_heatmaps": lambda: plot_error_heatmaps(run),
    }
    for name, draw in figures.items():
        path = draw()
        if path:
            run.figures[name] = path


# -----------------------------------------------------------------------------
# figures comparing runs


def plot_per_epoch(runs, key, ylabel, title, path):
    """One curve per run of log key per epoch."""
    fig = new_figure(6.5, 4)
    ax = fig.subplots()
    for run in runs:
        if run.log and key in run.log[0]:
            ax.plot([e["epoch"] for e in run.log], [e[key] for e in run.log], marker="o", markersize=3, label=run.name)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    epoch_axis(ax)
    legend_beside(ax)
    return save(fig, path)


def plot_loss_per_epoch(runs, path):
    """Train (solid) and test (dashed) loss per epoch, one panel per kind of loss: a VAE's nats per image
    and an AE's MSE per pixel differ by orders of magnitude."""
    groups = {}
    for run in runs:
        if run.log:
            groups.setdefault(loss_description(run), []).append(run)
    fig = new_figure(6 * len(groups), 4)
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, (description, members) in zip(axes, groups.items()):
        for run in members:
            epochs = [e["epoch"] for e in run.log]
            colour = f"C{runs.index(run) % 10}"
            ax.plot(epochs, [e["train_loss"] for e in run.log], color=colour, marker="o", markersize=3,
                    label=run.name)
            ax.plot(epochs, [e["test_loss"] for e in run.log], color=colour, marker="o", markersize=3,
                    linestyle="--")
        ax.set_ylabel(description)
        epoch_axis(ax)
        legend_beside(ax)
    fig.suptitle("loss per epoch: train (solid) and test (dashed)")
    return save(fig, path)


@torch.no_grad()
def psnr_against_noise(model, x, variances, seed=0):
    """Mean PSNR of decode(encode(x + noise)) and of the noisy input itself, for each noise variance:
    -> (recon_psnr, input_psnr), lists as long as variances. Noise is clipped to [0, 1], as in training."""
    recon_psnr, input_psnr = [], []
    for variance in variances:
        torch.manual_seed(seed)
        noisy = add_noise(x, math.sqrt(variance))
        recon = torch.cat([model.decode(model.encode(noisy[i:i + 500])) for i in range(0, len(x), 500)])
        recon_psnr.append(metrics.psnr(recon, x).mean().item())
        input_psnr.append(metrics.psnr(noisy, x).mean().item())
    return recon_psnr, input_psnr


def plot_psnr_vs_noise(runs, path, n=1000):
    chosen = [run for run in runs if run.kind in ("ae", "dae")]
    if not chosen:
        return None
    n = min([n] + [len(run.data.test_x) for run in chosen])
    fig = new_figure(6.5, 4)
    ax = fig.subplots()
    baselines = {}
    for i, run in enumerate(chosen):
        x = test_images(run, torch.arange(n))
        recon_psnr, input_psnr = psnr_against_noise(run.model, x, NOISE_VARIANCES)
        run.stats["psnr_vs_noise"] = recon_psnr
        baselines[run.args["dataset"]] = input_psnr
        ax.plot(NOISE_VARIANCES, recon_psnr, marker="o", color=f"C{i % 10}", label=run.name)
    # the noisy input itself, once per dataset: what a model has to beat
    for (dataset, input_psnr), style in zip(baselines.items(), ["--", ":", "-.", (0, (5, 1, 1, 1))]):
        ax.plot(NOISE_VARIANCES, input_psnr, linestyle=style, color="gray", marker=".",
                label=f"noisy input ({dataset})" if len(baselines) > 1 else "noisy input")
    ax.set_xlabel("noise variance (std = sqrt(variance))")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xticks(NOISE_VARIANCES)
    ax.grid(alpha=0.3)
    legend_beside(ax)
    ax.set_title(f"reconstruction PSNR against input noise, {n} test images")
    return save(fig, path)


def is_plain_ae(run):
    """An AE run, or an MCAE run with nothing masked (the same model)."""
    return run.kind == "ae" or (run.kind == "mcae" and run.model.config.mask_ratio == 0)


@torch.no_grad()
def plot_vae_vs_ae(runs, path):
    for vae in (run for run in runs if run.kind == "vae"):
        ae = next((run for run in runs if is_plain_ae(run) and run.args["dataset"] == vae.args["dataset"]), None)
        if ae is None:
            continue
        x = test_images(vae, class_indices(vae.data.test_y, N_IMAGES))
        rows, labels = [list(x)], ["original"]
        for run in (vae, ae):
            recon = run.model(x)[1]["recon"]
            rows.append(list(recon))
            psnr = metrics.psnr(recon, x).mean().item()
            labels.append(f"{'VAE' if run is vae else 'AE'} ({run.name})\nPSNR {psnr:.1f} dB")
        return grid_figure(rows, path, labels, title="VAE against AE reconstructions of the same test images")
    return None


def three_level_runs(runs):
    """The masking tutorial's three levels from MCAE runs of one dataset: nothing hidden, random pixels, blocks."""
    by_dataset = {}
    for run in runs:
        if run.kind != "mcae":
            continue
        config = run.model.config
        level = "identity" if config.mask_ratio == 0 else config.mask_type
        levels = by_dataset.setdefault(run.args["dataset"], {})
        # of several runs of one level (a sweep of ratios), show the most masked: the tutorial's ratio 0.5
        if level not in levels or config.mask_ratio > levels[level].model.config.mask_ratio:
            levels[level] = run
    for levels in by_dataset.values():
        if len(levels) == 3:
            return [levels["identity"], levels["pixel"], levels["block"]]
    return None


@torch.no_grad()
def level_score(run, x):
    """How well a level's MCAE fills in, on images x: PSNR over the hidden pixels, or over all pixels
    when nothing is hidden."""
    torch.manual_seed(0)
    _, out = run.model(x)
    config = run.model.config
    if config.mask_ratio == 0:
        return f"nothing hidden, PSNR {metrics.psnr(out['recon'], x).mean().item():.1f} dB over all pixels"
    psnr = torch.nanmean(hidden_psnr(out["recon"], x, out["mask"])).item()
    size = f" of {config.block_size}x{config.block_size}" if config.mask_type == "block" else ""
    return f"{config.mask_ratio:.0%} hidden in {config.mask_type}s{size}, PSNR {psnr:.1f} dB on hidden pixels"


@torch.no_grad()
def plot_three_levels(runs, path, n=1000):
    levels = three_level_runs(runs)
    if levels is None:
        return None
    data = levels[0].data
    shown = class_indices(data.test_y, N_IMAGES)
    scored = torch.arange(min(n, len(data.test_x)))  # the PSNR in the titles is over more images than are shown
    fig = new_figure(1.5 + N_IMAGES, 3 * 2.4)
    for ax, run, name in zip(fig.subplots(3, 1), levels, ["1. identity", "2. random pixels", "3. blocks"]):
        score = level_score(run, test_images(run, scored))
        torch.manual_seed(0)
        _, out = run.model(test_images(run, shown))
        draw_grid(ax, [list(mark_hidden(out["input"], out["mask"])), list(out["recon"])],
                  ["input\n(hidden: blue)", "reconstruction"])
        ax.set_title(f"{name} ({run.name}): {score}")
    fig.suptitle("three levels of reconstruction difficulty (MCAE)", fontweight="bold")
    return save(fig, path)


# -----------------------------------------------------------------------------
# report.md


def fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def count(value):
    return "–" if value is None else f"{value:,}"


def class_value(values, c):
    """values[c] as a float, nan for a class absent from the t-SNE subset (cluster_stats stops at the
    largest label present)."""
    return values[c].item() if c < len(values) else math.nan


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def input_psnr(run):
    value = run.results.get("psnr_input")
    # the input is the image itself (AE, VAE, nothing masked): metrics.psnr's 100 dB cap, not a measurement
    return "clean" if value is not None and value >= 99.9 else fmt(value, 2)


def best(runs, key):
    scored = [run for run in runs if isinstance(run.results.get(key), (int, float))]
    return max(scored, key=lambda run: run.results[key]) if scored else None


def summary(runs):
    """One or two sentences from the numbers: the best accuracy and the best PSNR."""
    protocols = [("linear_acc", "linear-probe"), ("finetune_acc", "fine-tune")]
    if len(runs) == 1:
        run = runs[0]
        parts = [f"{run.results[key]:.1%} {label} accuracy" for key, label in protocols if key in run.results]
        if "psnr" in run.results:
            parts.append(f"{run.results['psnr']:.2f} dB PSNR on the test set")
        return f"{run.name} reaches " + " and ".join(parts) + "." if parts else ""
    parts = []
    for key, label in protocols:
        top = best(runs, key)
        if top:
            parts.append(f"the best {label} accuracy is {top.name}'s ({top.results[key]:.1%})")
    sentence = ("Of these runs, " + " and ".join(parts) + ". ") if parts else ""
    top = best(runs, "psnr")
    if top:
        sentence += f"The best reconstruction is {top.name}'s, at {top.results['psnr']:.2f} dB PSNR on the test set."
    return sentence


def runs_section(runs):
    return ["## Runs", "", table(
        ["run", "model", "dataset", "training images", "epochs", "parameters"],
        [[run.name, run.kind, run.args["dataset"], count(run.results.get("train_size")),
          run.log[-1]["epoch"] if run.log else "–", count(run.results.get("parameters"))] for run in runs]), ""]


def accuracy_section(runs):
    """One column per protocol that ran in any of the runs (DvM's accuracy table)."""
    protocols = [(key, label) for key, label in [("linear_acc", "linear probe"), ("knn_acc", "k-NN"),
                                                 ("finetune_acc", "fine-tune")]
                 if any(key in run.results for run in runs)]
    if not protocols:
        return []
    return ["## Classification accuracy (test set)", "", table(
        ["run"] + [label for _, label in protocols],
        [[run.name] + [fmt(run.results.get(key)) for key, _ in protocols] for run in runs]), ""]


def reconstruction_section(runs):
    lines = ["## Reconstruction (test set)", "",
             "PSNR of the input: the noisy or masked image the encoder saw, against the original. "
             "Hidden PSNR: masked models, over the hidden pixels only.", "", table(
                 ["run", "PSNR (dB)", "SSIM", "MSE", "MAE", "PSNR of input (dB)", "hidden PSNR (dB)"],
                 [[run.name, fmt(run.results.get("psnr"), 2), fmt(run.results.get("ssim")),
                   fmt(run.results.get("mse"), 5), fmt(run.results.get("mae"), 5),
                   input_psnr(run), fmt(run.results.get("psnr_hidden"), 2)] for run in runs]), ""]
    noisy = [run for run in runs if "psnr_vs_noise" in run.stats]
    if noisy:
        lines += ["## PSNR (dB) against input noise", "", table(
            ["run"] + [f"variance {v}" for v in NOISE_VARIANCES],
            [[run.name] + [fmt(v, 2) for v in run.stats["psnr_vs_noise"]] for run in noisy]), ""]
    return lines


@torch.no_grad()
def filling_section(runs, n=1000):
    """What training with masks buys (C10): each MCAE against the plain AE (an MCAE run with mask ratio 0
    of the same dataset) given the very same masked test images."""
    plain = {run.args["dataset"]: run for run in runs if run.kind == "mcae" and run.model.config.mask_ratio == 0}
    rows = []
    for run in runs:
        config = run.model.config
        if run.kind != "mcae" or config.mask_ratio == 0 or run.args["dataset"] not in plain:
            continue
        x = test_images(run, torch.arange(min(n, len(run.data.test_x))))
        settings = dict(mask_type=config.mask_type, mask_ratio=config.mask_ratio, block_size=config.block_size)
        row = [run.name, f"{config.mask_type} {config.mask_ratio}"]
        for model in (run.model, plain[run.args["dataset"]].model):
            _, recon, mask = masked_reconstruction(model, x, **settings)
            psnr_hidden = torch.nanmean(hidden_psnr(recon, x, mask)).item()
            row += [fmt(metrics.psnr(recon, x).mean().item(), 2), fmt(psnr_hidden, 2)]
        rows.append(row)
    if not rows:
        return []
    return ["## Filling in hidden pixels: MCAE against the plain AE", "",
            f"PSNR (dB) over all pixels and over the hidden ones, on the first {n} test images masked the "
            "same way for both models (the plain AE is the MCAE run trained with mask ratio 0).", "",
            table(["run", "mask", "MCAE PSNR", "MCAE hidden PSNR", "plain AE PSNR", "plain AE hidden PSNR"], rows),
            ""]


def cluster_section(runs):
    """DvM's cluster radius per class, in the t-SNE embedding and in the latent space; one table per
    dataset, since the classes differ."""
    by_dataset = {}
    for run in runs:
        if "tsne" in run.stats:
            by_dataset.setdefault(run.args["dataset"], []).append(run)
    if not by_dataset:
        return []
    lines = ["## Clusters", "",
             "Radius of a class: the mean distance of its points to their centre (as the DAE-vs-MAE study), over the "
             "clean test images of the t-SNE figure. In the 2-D t-SNE embedding it is in t-SNE units; in "
             "the latent space it is divided by the mean distance of all points to the overall centre, "
             "so models with latents of different sizes and scales compare fairly. Smaller is tighter; "
             "a higher silhouette (-1 .. 1) means better separated classes.", ""]
    for dataset, members in by_dataset.items():
        for title, source, key in [("t-SNE radius", "tsne", "radius"),
                                   ("latent radius / spread", "latent", "relative_radius")]:
            rows = [[name] + [fmt(class_value(run.stats[source][key], c), 3) for run in members]
                    for c, name in enumerate(members[0].data.classes)]
            rows.append(["**mean**"] + [fmt(torch.nanmean(run.stats[source][key]).item(), 3) for run in members])
            rows.append(["**silhouette**"] + [fmt(run.stats[source]["silhouette"], 3) for run in members])
            lines += [f"### {title}, {dataset}", "", table(["class"] + [run.name for run in members], rows), ""]
    return lines


def figures_section(runs, comparison_figures, out_dir):
    """Links to every figure written, relative to report.md: this is also the list of what was drawn."""
    def links(figures):
        return ", ".join(f"[{name}]({os.path.relpath(path, out_dir)})" for name, path in figures.items())

    lines = ["## Figures", ""] + [f"- {run.name}: {links(run.figures)}" for run in runs]
    if comparison_figures:
        lines.append(f"- comparing runs: {links(comparison_figures)}")
    return lines


def write_report(runs, comparison_figures, out_dir):
    lines = (["# nanoAE report", "", summary(runs), ""] + runs_section(runs) + accuracy_section(runs)
             + reconstruction_section(runs) + filling_section(runs) + cluster_section(runs)
             + figures_section(runs, comparison_figures, out_dir))
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
    p.add_argument("--out", default=None, help="where report.md and the figures comparing runs go "
                   "(default: the parent of the first RUN_DIR)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="(default: cuda if available, else cpu)")
    p.add_argument("--data-dir", default=None,
                   help="where torchvision finds the datasets (default: the --data-dir each run was trained with)")
    p.add_argument("--threads", type=train.positive_int, default=1,
                   help="CPU threads for torch; the tensors here are small, so more threads mostly wait on each "
                   "other, and on a busy machine they slow everything down (default: 1)")
    p.add_argument("--tsne-per-class", type=train.positive_int, default=200,
                   help="test images per class in the t-SNE figures and cluster tables (default: 200)")
    p.add_argument("--tsne-iters", type=train.positive_int, default=1000,
                   help="t-SNE iterations, the first 250 with early exaggeration (default: 1000)")
    args = p.parse_args(argv)
    args.out = args.out or os.path.dirname(os.path.abspath(args.run_dirs[0]))
    return args


def draw_comparison_figures(runs, out_dir):
    """Every figure comparing runs that applies to the runs given: name -> path written."""
    figure_dir = os.path.join(out_dir, "figures")
    comparison = {
        "psnr_per_epoch": lambda: plot_per_epoch(runs, "psnr", "test PSNR (dB)", "test PSNR per epoch",
                                                 os.path.join(figure_dir, "psnr_per_epoch.png")),
        "loss_per_epoch": lambda: plot_loss_per_epoch(runs, os.path.join(figure_dir, "loss_per_epoch.png")),
        "psnr_vs_noise": lambda: plot_psnr_vs_noise(runs, os.path.join(figure_dir, "psnr_vs_noise.png")),
        "vae_vs_ae": lambda: plot_vae_vs_ae(runs, os.path.join(figure_dir, "vae_vs_ae.png")),
        "three_levels": lambda: plot_three_levels(runs, os.path.join(figure_dir, "three_levels.png")),
    }
    figures = {}
    for name, draw in comparison.items():
        path = draw()
        if path:
            figures[name] = path
    return figures


def main(argv=None):
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        t0 = time.time()
        runs = load_runs(args.run_dirs, args.device, args.data_dir)
        print(f"loaded {len(runs)} run(s) in {time.time() - t0:.1f}s: {', '.join(run.name for run in runs)}")
        for run in runs:
            warning = train.dead_run_warning(run.results)
            if warning:
                print(f"{run.name}: {warning}")
        for run in runs:
            t = time.time()
            draw_run_figures(run, args)
            print(f"{run.name}: {len(run.figures)} figures in {time.time() - t:.1f}s")
        write_report(runs, draw_comparison_figures(runs, args.out), args.out)
        print(f"done in {time.time() - t0:.1f}s")
    finally:
        torch.set_num_threads(threads)  # main() called from Python (tests) leaves the process as it was
    return runs


if __name__ == "__main__":
    try:
        main()
    except (AnalyzeError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # an unwritable --out, an unreadable file: the file and the reason
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
