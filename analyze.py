"""
Every figure and table of the four autoencoder studies nanoAE reproduces, from finished runs.
In brackets, the studies that show each one: DvM = the DAE-vs-MAE study (MNIST, CIFAR-10),
Mask = the masking tutorial (three levels of masking), C10 = the CIFAR-10 AE/DAE/VAE/MCAE assignment,
MLP = the report on MLP denoising AEs (MNIST, Fashion-MNIST).

    python analyze.py out/ae-fashion-mnist out/dae-fashion-mnist out/mae-fashion-mnist

Measure, then draw: this file measures each run once into RUN_DIR/analysis.json and runs its model on
test images; figures.py draws the figures and report.md from those numbers and images alone.

Per run, in RUN_DIR/figures/:
    reconstructions.png   original / what the encoder saw / reconstruction        (DvM, C10, MLP)
    tsne.png              t-SNE of the features beside raw pixels (a DAE: noisy images too) (DvM, C10)
    saliency.png          AE, DAE, VAE, MCAE: how strongly each pixel moves the latent code (DvM)
    attention.png         MAE: last-layer CLS attention per head, on the whole and the masked image (DvM)
    weights.png           histogram of every weight tensor, no norm layers, no biases (DvM)
    interpolation.png     models with a decoder: walking the latent line between two images (C10)
    arithmetic.png        models with a decoder: class-mean latent arithmetic, e.g. dog - cat + bird (C10)
    vae_samples.png       VAE: images decoded from the prior                       (C10)
    error_heatmaps.png    MCAE, MAE: per-pixel squared error at mask ratios 0.1, 0.3, 0.5 and the trained one (C10)
Comparing the runs, in --out (default: the parent of the first run dir):
    figures/psnr_per_epoch.png   test PSNR per epoch, a panel per dataset, masked models apart (C10, MLP)
    figures/loss_per_epoch.png   train and test loss per epoch, a panel per kind of loss; the VAE's KL (C10, MLP)
    figures/psnr_vs_noise.png    AE, DAE: PSNR against test noise variance; each DAE at its training noise (MLP)
    figures/psnr_per_latent.png  MLP AE, DAE: best PSNR at each latent size over the L1 settings tried (MLP)
    figures/mask_ratios.png      MCAE runs trained at different mask ratios, tested at 0.1, 0.3, 0.5 (C10)
    figures/vae_vs_ae.png        a VAE and an AE run of one dataset: originals and both reconstructions (C10)
    figures/three_levels.png     MCAE runs hiding nothing, random pixels and blocks (Mask)
    report.md                    every run's numbers beside their baselines, PSNR and SSIM worked through
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.colors import LogNorm, Normalize

import figures
import metrics
from runs import Parser, dead_run_warning, feature_name, load_runs, positive_int, run_main
from data import to_float
from figures import MASK_RATIOS, NOISE_VARIANCES, is_masked
from mae import MAE
from mcae import random_mask

N_MEASURE = 1000                              # test images behind the PSNR sweeps (fewer if the test set is)
N_IMAGES = 8                                  # test images per image figure
DEFAULT_NOISE_STD = 0.316                     # the DAE's default noise: variance 0.1
# class-mean latent arithmetic a - b + c, by class name: the CIFAR-10 assignment's dog - cat + bird, and
# one triple in the same spirit for the other datasets (what b lacks and a has, added to c)
ARITHMETIC = {"mnist": ("7", "1", "0"), "fashion-mnist": ("Ankle boot", "Sneaker", "Sandal"),
              "cifar10": ("dog", "cat", "bird"), "cifar10-jitter": ("dog", "cat", "bird")}
INTERPOLATION_PAIRS = [(0, 1), (3, 5), (7, 9)]  # class indices of the image pairs to interpolate between


# -----------------------------------------------------------------------------
# which test images the analysis looks at


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


@torch.no_grad()
def in_batches(function, x, batch_size=500):
    return torch.cat([function(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def add_noise(x, std):
    return (x + std * torch.randn_like(x)).clamp(0, 1)  # clipped, as dae.py: still an image


# -----------------------------------------------------------------------------
# what a model makes of images: inputs are corrupted here, by arguments (MAE.forward's mask_ratio,
# mcae.random_mask, add_noise), never by changing a model's config


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


def cls_attention(model, x, mask_ratio=0.0, seed=0):
    """MAE.attention_maps at pixel size and in units of an even share (1 = as much as if the head looked at
    every patch seen alike), so heads and images compare: -> (B, heads, H, W), and the mask (B, 1, H, W)."""
    p = model.config.patch_size
    torch.manual_seed(seed)
    weights, mask = model.attention_maps(x, mask_ratio)                      # (B, heads, L), (B, L)
    weights = weights * (1 - mask).sum(1).view(-1, 1, 1)                     # times the patches seen: mean 1
    grid = x.shape[2] // p
    maps, mask = (m.reshape(len(x), -1, grid, grid).repeat_interleave(p, 2).repeat_interleave(p, 3)
                  for m in (weights, mask[:, None]))                         # a patch's weight on its p x p pixels
    return maps, mask


# -----------------------------------------------------------------------------
# measuring: a run's numbers into a plain dict, RUN_DIR/analysis.json


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
        torch.manual_seed(0)  # the same noise for every run
        test_f = in_batches(run.model.encode, add_noise(x, math.sqrt(variance)))
        accuracy.append(metrics.linear_probe(train_f, run.data.train_y[:n_train], test_f, run.data.test_y))
    return {"n_train": len(train_f), "variances": [0.0] + variances, "accuracy": accuracy}


@torch.no_grad()
def measure_tsne(run, per_class, n_iter):
    """t-SNE of the features of the same test images and of their raw pixels (the baseline), and for a model
    trained on noise of the noisy images too (C10), with the cluster statistics of each (DvM's class radius),
    in the feature space and in the embedding."""
    idx = balanced_indices(run.data.test_y, per_class)
    x, labels = test_images(run, idx), run.data.test_y[idx.to(run.data.test_y.device)].cpu()
    std = run.config.get("noise_std", DEFAULT_NOISE_STD)
    torch.manual_seed(0)
    tsne = {"labels": labels, "per_class": torch.bincount(labels, minlength=len(run.data.classes)), "noise_std": std}
    sets = {"clean": in_batches(run.model.encode, x), "pixels": x.flatten(1)}
    if run.kind == "dae":
        sets["noisy"] = in_batches(run.model.encode, add_noise(x, std))
    for name, features in sets.items():
        # perplexity must stay below the number of points: only tiny test sets get less than 30
        embedding = metrics.tsne_fast(features, n_iter=n_iter, perplexity=min(30.0, (len(x) - 1) / 3))
        tsne[name] = {"embedding": embedding, "latent": metrics.cluster_stats(features, labels.to(features.device)),
                      "tsne": metrics.cluster_stats(torch.from_numpy(embedding), labels)}
    return {**tsne, "latent_size": sets["clean"].shape[1]}


@torch.no_grad()
def measure_worked_example(run):
    """PSNR and SSIM of the first test image step by step (DvM's sample calculation): SSIM's two factors,
    brightness and contrast-structure, and their product, each averaged over metrics.ssim's windows."""
    torch.manual_seed(0)
    x = test_images(run, 1)
    recon = run.model(x)[1]["recon"].float()
    mse = (recon - x).pow(2).mean().item()
    brightness, contrast_structure = metrics.ssim_maps(recon, x)
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-10)), "brightness": brightness.mean().item(),
            "contrast_structure": contrast_structure.mean().item(),
            "ssim": (brightness * contrast_structure).mean().item()}


def plain(value):
    """Tensors and arrays inside value -> lists, so json can write it."""
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray)) else value


def measure(run, tsne_per_class, tsne_iters):
    """Every number the figures and report.md show of one run, computed once: a plain (json) dict with the
    run's name, kind, dataset, classes, config, epochs, log and results.json, and what is measured here: tsne
    (embeddings, cluster statistics), worked_example, noise (AE, DAE), masking (AE, MCAE, MAE)."""
    analysis = {"name": run.name, "kind": run.kind, "feature": feature_name(run.kind, run.config),
                "dataset": run.args["dataset"], "classes": run.data.classes,
                "config": run.config, "epochs": run.log[-1]["epoch"] if run.log else run.args["epochs"],
                "log": run.log, "results": run.results, "tsne": measure_tsne(run, tsne_per_class, tsne_iters),
                "worked_example": measure_worked_example(run)}
    if run.kind in ("ae", "dae"):
        x = test_images(run)
        recon, noisy = psnr_against_noise(run.model, x, NOISE_VARIANCES)
        n_train = min(5000, run.args["train_size"] or 5000)  # clean training images, no more than the run saw
        analysis["noise"] = {"n_images": len(x), "psnr": recon, "input_psnr": noisy,
                             "probe": probe_under_noise(run, NOISE_VARIANCES, n_train)}
    if run.kind in ("ae", "mcae", "mae"):
        analysis["masking"] = measure_masking(run)
    return plain(analysis)


# -----------------------------------------------------------------------------
# per-run figures: each runs the model on test images and hands figures.py the pictures, or returns None
# where it does not apply


@torch.no_grad()
def reconstructions(run, analysis, path):
    idx = class_indices(run.data.test_y, N_IMAGES)
    x = test_images(run, idx)
    torch.manual_seed(0)  # the same noise / masks every time the figure is drawn
    _, out = run.model(x)
    rows, labels, score = [list(x)], ["original"], f"PSNR {metrics.psnr(out['recon'], x).mean():.1f} dB"
    if "mask" in out and out["mask"].any():  # a ratio-0 MCAE hides nothing: no row for it
        rows, labels = rows + [list(figures.mark_hidden(out["input"], out["mask"]))], labels + ["masked input\n(hidden: blue)"]
        score = f"PSNR on hidden pixels {torch.nanmean(metrics.hidden_psnr(out['recon'], x, out['mask'])):.1f} dB"
    elif not torch.equal(out["input"], x):  # AE and VAE see the image itself: no row
        rows, labels = rows + [list(out["input"])], labels + ["noisy input"]
    if "prediction" in out:  # the MAE predicts every patch; its reconstruction keeps the visible ones
        rows, labels = rows + [list(out["prediction"])], labels + ["prediction\n(every patch)"]
        labels.append("reconstruction\n(visible patches\npasted back)")
    else:
        labels.append("reconstruction")
    return figures.grid_figure(rows + [list(out["recon"])], path, labels,
                               [run.data.classes[y] for y in run.data.test_y[idx.to(run.data.test_y.device)]],
                               f"{run.name}: reconstructions of test images ({score}, mean of these {len(idx)})")


def tsne(run, analysis, path):
    return figures.plot_tsne(analysis, path)


def saliency(run, analysis, path):
    if run.kind == "mae":
        return None
    x = test_images(run, class_indices(run.data.test_y, N_IMAGES))
    energy = metrics.jacobian_energy(run.model.encode, x).detach()
    low, high = energy.amin(dim=(1, 2), keepdim=True), energy.amax(dim=(1, 2), keepdim=True)
    normalised = (energy - low) / (high - low).clamp(min=1e-12)  # each map to [0, 1]
    return figures.grid_figure([list(x), list(figures.heat_images(normalised))], path, ["input", "saliency"],
                               title=f"{run.name}: saliency, sum over latent units of (d z / d pixel)^2",
                               heat_label="saliency (per image, 0-1)")


def attention(run, analysis, path, n=4):
    """Each image twice: whole, and masked at the training ratio as in pretraining (DvM)."""
    if run.kind != "mae":
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    ratio = run.config["mask_ratio"]
    shown = [cls_attention(run.model, x), cls_attention(run.model, x, ratio)]
    # one log scale for every map, from the least to the most attention any patch got: a head spread
    # evenly reads as mid-dark and a focused one as bright, which each map's own 0 .. max would hide
    seen = torch.cat([maps[(mask == 0).expand_as(maps)] for maps, mask in shown])
    scale = LogNorm(seen.min().clamp(min=1e-3).item(), seen.max().item(), clip=True)
    rows = [[image, *figures.heat_images(image_maps, scale, hidden=image_mask.expand_as(image_maps))]
            for maps, mask in shown for image, image_maps, image_mask in
            zip(figures.mark_hidden(x * (1 - mask), mask), maps, mask)]
    return figures.grid_figure(rows, path, ["whole"] * n + ["masked"] * n,
                               ["input"] + [f"head {h + 1}" for h in range(len(rows[0]) - 1)],
                               f"{run.name}: last-layer CLS attention per head, on the whole image and with {ratio:.0%} "
                               "of patches hidden (blue: hidden, no attention)", heat_scale=scale,
                               heat_label="attention / an even share (1 = as if every patch seen got the same)",
                               cell=1.3)


def weights(run, analysis, path):
    named = [(f"{name}.weight", m.weight.detach().float().cpu().numpy()) for name, m in run.model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    return figures.plot_weights(named, run.name, path)


@torch.no_grad()
def interpolation(run, analysis, path, steps=10):
    labels, classes = run.data.test_y.cpu(), run.data.classes
    pairs = [(a, b) for a, b in INTERPOLATION_PAIRS if (labels == a).any() and (labels == b).any()]
    if not hasattr(run.model, "decode") or not pairs:
        return None
    rows, t = [], torch.linspace(0, 1, steps)
    for a, b in pairs:
        images = test_images(run, torch.stack([torch.nonzero(labels == c)[0, 0] for c in (a, b)]))
        z = run.model.encode(images)  # (2, D)
        rows.append([images[0], *run.model.decode((1 - t[:, None]) * z[0] + t[:, None] * z[1]), images[1]])
    return figures.grid_figure(rows, path, [f"{classes[a]}\nto {classes[b]}" for a, b in pairs],
                               ["image A"] + [f"t={v:.2f}" for v in t.tolist()] + ["image B"],
                               title=f"{run.name}: decoded (1-t) z_A + t z_B between two test images")


@torch.no_grad()
def arithmetic(run, analysis, path):
    # your own folder: the first three classes, a - b + c
    names, labels = ARITHMETIC.get(run.args["dataset"], tuple(run.data.classes[:3])), run.data.test_y.cpu()
    ids = [run.data.classes.index(name) for name in names]
    if not hasattr(run.model, "decode") or len(ids) < 3 or not all((labels == c).any() for c in ids):
        return None
    # class means of the latents of (at most) the first 1000 test images of each class
    means = [in_batches(run.model.encode, test_images(run, torch.nonzero(labels == c).flatten()[:1000])).mean(0)
             for c in ids]
    decoded = run.model.decode(torch.stack(means + [means[0] - means[1] + means[2]]))
    return figures.grid_figure([list(decoded)], path,
                               col_labels=[f"mean {name}" for name in names] + [f"{names[0]} - {names[1]}\n+ {names[2]}"],
                               title=f"{run.name}: class-mean latent arithmetic", cell=1.6)


@torch.no_grad()
def vae_samples(run, analysis, path, n=8):
    if run.kind != "vae":
        return None
    torch.manual_seed(0)
    samples = run.model.sample(n * n)
    return figures.grid_figure([list(samples[i * n:(i + 1) * n]) for i in range(n)], path,
                               title=f"{run.name}: {n * n} samples, z ~ N(0, I) decoded", cell=0.8)


def error_heatmaps(run, analysis, path, n=6):
    if run.kind not in ("mcae", "mae"):
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    # the run's own kind of mask, as measure_masking: the assignment's ratios and the one it was trained at
    setting = analysis["masking"]["settings"][-1]
    scores = {s["mask_ratio"]: s for s in analysis["masking"]["settings"] if s["mask_type"] == setting["mask_type"]}
    shown = [masked_reconstruction(run.model, x, ratio, setting["mask_type"], setting["block_size"]) for ratio in scores]
    errors = [(recon - x).pow(2).mean(1) for _, recon, _ in shown]  # (n, H, W), averaged over channels
    # linear up to the 99.5th percentile: a few outliers should not wash out the rest
    scale = Normalize(0, max(torch.stack(errors).quantile(0.995).item(), 1e-3), clip=True)
    rows, labels = [], []
    trained = run.config["mask_ratio"]
    for ratio, (inp, recon, mask), error in zip(scores, shown, errors):
        rows += [list(figures.mark_hidden(inp, mask)), list(recon), list(figures.heat_images(error, scale))]
        score = scores[ratio]  # beside what leaving the holes black scores: high where they hit background
        labels += [f"ratio {ratio}{' (trained)' if ratio == trained else ''}:\ninput (hidden: blue)", "reconstruction",
                   f"squared error\nhidden PSNR {score['hidden_psnr']:.1f} dB\n(black fill "
                   f"{score['black_fill_hidden_psnr']:.1f} dB)"]
    return figures.grid_figure(rows, path, labels, title=f"{run.name}: per-pixel squared error at mask ratios "
                               f"{', '.join(map(str, scores))}, trained at {trained}\n(PSNRs over the first "
                               f"{analysis['masking']['n_images']} test images)", heat_scale=scale,
                               heat_label="squared error")


PER_RUN_FIGURES = {"reconstructions": reconstructions, "tsne": tsne, "saliency": saliency, "attention": attention,
                   "weights": weights, "interpolation": interpolation, "arithmetic": arithmetic,
                   "vae_samples": vae_samples, "error_heatmaps": error_heatmaps}


# -----------------------------------------------------------------------------
# figures comparing runs: from the analyses alone, or with images the models make here


@torch.no_grad()
def vae_vs_ae(runs, analyses, path):
    for vae in (run for run in runs if run.kind == "vae"):
        # an AE run, or an MCAE run with nothing masked (the same model)
        ae = next((run for run in runs if run.args["dataset"] == vae.args["dataset"] and (
            run.kind == "ae" or (run.kind == "mcae" and run.config["mask_ratio"] == 0))), None)
        if ae is not None:
            x = test_images(vae, class_indices(vae.data.test_y, N_IMAGES))
            recons = [vae.model(x)[1]["recon"], ae.model(x)[1]["recon"]]
            labels = [f"{what} ({run.name})\nPSNR {metrics.psnr(recon, x).mean():.1f} dB"
                      for what, run, recon in zip(("VAE", "AE"), (vae, ae), recons)]
            return figures.grid_figure([list(x)] + [list(r) for r in recons], path, ["original"] + labels,
                                       title="VAE against AE reconstructions of the same test images")
    return None


@torch.no_grad()
def three_levels(runs, analyses, path):
    """The masking tutorial's three levels from MCAE runs of one dataset: nothing hidden, random pixels,
    blocks (of several runs of a level, the most masked: the tutorial's ratio 0.5)."""
    by_dataset = {}
    for run in sorted((run for run in runs if run.kind == "mcae"), key=lambda run: run.config["mask_ratio"]):
        level = "identity" if run.config["mask_ratio"] == 0 else run.config["mask_type"]
        by_dataset.setdefault(run.args["dataset"], {})[level] = run
    levels = next((levels for levels in by_dataset.values() if len(levels) == 3), None)
    if levels is None:
        return None
    drawn = []
    for level, name in [("identity", "1. identity"), ("pixel", "2. random pixels"), ("block", "3. blocks")]:
        run, config, results = levels[level], levels[level].config, levels[level].results
        torch.manual_seed(0)
        _, out = run.model(test_images(run, class_indices(run.data.test_y, N_IMAGES)))
        size = f" of {config['block_size']}x{config['block_size']}" if level == "block" else ""
        title = f"{name} ({run.name}): " + (
            f"nothing hidden, test PSNR {figures.fmt(results.get('psnr'), 1)} dB" if level == "identity" else
            f"{config['mask_ratio']:.0%} hidden in {level}s{size}, test PSNR "
            f"{figures.fmt(results.get('psnr_hidden'), 1)} dB on hidden pixels")
        drawn.append((title, [list(figures.mark_hidden(out["input"], out["mask"])), list(out["recon"])],
                      ["input\n(hidden: blue)", "reconstruction"]))
    return figures.plot_levels(drawn, path)


COMPARISON_FIGURES = {
    "psnr_per_epoch": lambda runs, analyses, path: figures.plot_psnr_per_epoch(analyses, path),
    "loss_per_epoch": lambda runs, analyses, path: figures.plot_loss_per_epoch(analyses, path),
    "psnr_vs_noise": lambda runs, analyses, path: figures.plot_psnr_vs_noise(analyses, path),
    "psnr_per_latent": lambda runs, analyses, path: figures.plot_psnr_per_latent(analyses, path),
    "mask_ratios": lambda runs, analyses, path: figures.plot_mask_ratios(analyses, path),
    "vae_vs_ae": vae_vs_ae, "three_levels": three_levels}


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by train.py")
    p.add_argument("--out", help="where report.md and the figures comparing runs go (default: the parent of "
                   "the first RUN_DIR)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: %(default)s)")
    p.add_argument("--data-dir", help="where torchvision finds the datasets (default: each run's own --data-dir)")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads for torch; the tensors "
                   "here are small, so more threads mostly wait on each other (default: 1)")
    p.add_argument("--tsne-per-class", type=positive_int, default=200, help="test images per class in the t-SNE "
                   "figures and cluster tables (default: 200)")
    p.add_argument("--tsne-iters", type=positive_int, default=1000, help="t-SNE iterations, the first 250 with "
                   "early exaggeration (default: 1000)")
    args = p.parse_args(argv)
    args.out = args.out or os.path.dirname(os.path.abspath(args.run_dirs[0]))
    return args


def draw(plots, inputs, out_dir):
    """Each figure of plots ({name: plot}) drawn from inputs to OUT_DIR/figures/NAME.png, where it applies:
    -> {name: path}."""
    return {name: path for name, plot in plots.items()
            if (path := plot(*inputs, os.path.join(out_dir, "figures", f"{name}.png")))}


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
        analyses, drawn = [], {}
        for run in runs:
            print(f"{run.name}: {dead_run_warning(run.results) or 'measuring'}")
            analyses.append(measure(run, args.tsne_per_class, args.tsne_iters))
            with open(os.path.join(run.path, "analysis.json"), "w") as f:
                json.dump(analyses[-1], f, indent=1)
            drawn[run.name] = draw(PER_RUN_FIGURES, (run, analyses[-1]), run.path)
        drawn["comparing runs"] = draw(COMPARISON_FIGURES, (runs, analyses), args.out)
        figures.write_report(analyses, args.out, drawn)
        print(f"done in {time.time() - t0:.1f}s")
    finally:
        torch.set_num_threads(threads)  # main() called from Python (tests) leaves the process as it was
    return runs, analyses, drawn


if __name__ == "__main__":
    run_main(main)
