"""
Every figure and table of the four autoencoder studies nanoAE reproduces, from finished runs.

    python analyze.py out/ae-fashion-mnist out/dae-fashion-mnist out/mae-fashion-mnist

Measure, then draw: each run is measured once into RUN_DIR/analysis.json, and its model run on test images;
figures.py draws the figures and report.md. Each figure (--help lists them) names the studies that show it:
DvM = the DAE-vs-MAE study, Mask = the masking tutorial, C10 = the CIFAR-10 assignment, MLP = the MLP report.
"""
import argparse
import functools
import inspect
import json
import math
import os
import time

import torch
import torch.nn as nn
from matplotlib.colors import Normalize

import figures
import metrics
from data import add_noise, balanced_indices, class_indices, in_batches, shown_images, test_images, to_float
from figures import MASK_RATIOS, NOISE_VARIANCES, is_masked
from mae import MAE, unpatchify
from mcae import random_mask
from runs import Parser, dead_run_warning, feature_name, load_runs, plain, positive_int, run_main

N_MEASURE = 1000                              # test images behind the PSNR sweeps (fewer if the test set is)
DEFAULT_NOISE_STD = 0.316                     # the DAE's default noise: variance 0.1
# class-mean latent arithmetic a - b + c, by class name: the CIFAR-10 assignment's dog - cat + bird, and
# one triple in the same spirit for the other datasets (what b lacks and a has, added to c)
ARITHMETIC = {"mnist": ("7", "1", "0"), "fashion-mnist": ("Ankle boot", "Sneaker", "Sandal"),
              "cifar10": ("dog", "cat", "bird"), "cifar10-jitter": ("dog", "cat", "bird")}
INTERPOLATION_PAIRS = [(0, 1), (3, 5), (7, 9)]  # class indices of the image pairs to interpolate between
SWEEP_RATIOS = [0.1, 0.25, 0.5, 0.75, 0.9, 0.95]  # test mask ratios of "when MAE fails" (the masking tutorial)

# -----------------------------------------------------------------------------
# the images and what a model makes of them: inputs are corrupted here, by arguments (MAE.forward's
# mask_ratio, mcae.random_mask, add_noise), never by changing a model's config


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
    return x * (1 - mask), in_batches(lambda batch: model.decoder(model.encoder(batch)), x * (1 - mask)), mask


def cls_attention(model, x, mask_ratio=0.0, seed=0):
    """MAE.attention_maps at pixel size, in units of an even share (1 = as if the head looked at every patch seen
    alike): -> (B, heads, H, W), and the mask (B, 1, H, W)."""
    p = model.config.patch_size
    torch.manual_seed(seed)
    weights, mask = model.attention_maps(x, mask_ratio)                      # (B, heads, L), (B, L)
    weights = weights * (1 - mask).sum(1).view(-1, 1, 1)                     # times the patches seen: mean 1
    # a patch's value on each of its p x p pixels: (B, L, p*p*heads) with the heads as channels
    return [unpatchify(m.transpose(1, 2).repeat(1, 1, p * p), p, m.shape[1]) for m in (weights, mask[:, None])]


def unit_range(maps):
    """Each map (..., H, W) scaled to [0, 1], its lowest value to 0 and its highest to 1."""
    low, high = maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp(min=1e-12)


# -----------------------------------------------------------------------------
# measuring: a run's numbers into a plain dict, RUN_DIR/analysis.json


def measure_masking(run, object_level=0.3, lost=0.25):
    """metrics.hidden_scores at the assignment's mask ratios and the run's own, the MAE's from a tenth of its
    patches hidden to nearly all (over-masking); a masked run with its own kind of mask, a plain AE with both.
    Grey images: the share whose object (pixels above object_level) keeps under `lost` visible, and the
    hidden PSNR of those and of the rest (the masking tutorial's small objects lost)."""
    config, x, rows = run.config, test_images(run.data, N_MEASURE), []
    ratios = sorted(set(MASK_RATIOS) | {config.get("mask_ratio", 0.5)} - {0} | (
        {r for r in SWEEP_RATIOS if int(run.model.num_patches * (1 - r)) >= 1} if run.kind == "mae" else set()))
    kinds = ([(config.get("mask_type", "patch"), config.get("block_size", config.get("patch_size")))]
             if is_masked(run.kind, config) else [("pixel", 8), ("block", 8)])
    ink = (x.mean(1, keepdim=True) > object_level).float()                                  # (N, 1, H, W)
    for (mask_type, block), ratio in [(kind, ratio) for kind in kinds for ratio in ratios]:
        _, recon, mask = masked_reconstruction(run.model, x, ratio, mask_type, block)
        rows.append({"mask_type": mask_type, "mask_ratio": ratio, "block_size": block,
                     **metrics.hidden_scores(recon, x, mask)})
        if x.shape[1] == 1:
            psnr = metrics.hidden_psnr(recon, x, mask)                                       # (N,)
            gone = ((1 - mask) * ink).flatten(1).sum(1) / ink.flatten(1).sum(1).clamp(min=1) < lost  # (N,)
            rows[-1].update(object_lost=gone.float().mean().item(), hidden_psnr_object_lost=psnr[gone].nanmean().item(),
                            hidden_psnr_object_seen=psnr[~gone].nanmean().item())
    return {"n_images": len(x), "lost": lost, "settings": rows}


@torch.no_grad()
def psnr_against_noise(model, x, variances, seed=0):
    """Mean PSNR of decode(encode(x + noise)) and of the noisy input itself, for each noise variance:
    -> (recon_psnr, input_psnr), lists as long as variances. Noise is clipped to [0, 1], as in training."""
    noisy = [add_noise(x, math.sqrt(v), torch.Generator(x.device).manual_seed(seed)) for v in variances]
    recon = [in_batches(lambda batch: model.decode(model.encode(batch)), images) for images in noisy]
    return [metrics.psnr(r, x).mean().item() for r in recon], [metrics.psnr(n, x).mean().item() for n in noisy]


@torch.no_grad()
def probe_under_noise(run, variances, n_train=5000):
    """Accuracy of a linear probe trained on the latents of clean training images (the first n_train),
    tested on the latents of test images with Gaussian noise of each variance, 0 first (C10, AE against
    DAE: how far noise moves a latent away from its class). The same noise for every run."""
    train_f = in_batches(run.model.encode, to_float(run.data.train_x[:n_train]))
    x, accuracy = test_images(run.data, len(run.data.test_x)), []
    for variance in [0.0] + variances:
        test_f = in_batches(run.model.encode, add_noise(x, math.sqrt(variance), torch.Generator(x.device).manual_seed(0)))
        accuracy.append(metrics.linear_probe(train_f, run.data.train_y[:n_train], test_f, run.data.test_y))
    return {"n_train": len(train_f), "variances": [0.0] + variances, "accuracy": accuracy}


@torch.no_grad()
def measure_tsne(run, per_class, n_iter):
    """t-SNE and PCA of the features of test images and of their raw pixels (the baseline); an AE's or DAE's of
    noisy images too (its own noise, else variance 0.1: C10); each with its cluster statistics (DvM)."""
    idx = balanced_indices(run.data.test_y, per_class)
    x, labels = test_images(run.data, idx), run.data.test_y[idx.to(run.data.test_y.device)].cpu()
    std = run.config.get("noise_std", DEFAULT_NOISE_STD)
    torch.manual_seed(0)
    tsne = {"labels": labels, "per_class": torch.bincount(labels, minlength=len(run.data.classes)), "noise_std": std}
    sets = {"clean": in_batches(run.model.encode, x), "pixels": x.flatten(1)}
    if run.kind in ("ae", "dae"):
        sets["noisy"] = in_batches(run.model.encode, add_noise(x, std))
    # the noisy latents on the clean latents' principal axes: what noise moves shows as a shift
    axes = {name: metrics.pca(features, 2) for name, features in sets.items() if name != "noisy"}
    for name, features in sets.items():
        # perplexity must stay below the number of points: only tiny test sets get less than 30
        embedding = metrics.tsne_fast(features, n_iter=n_iter, perplexity=min(30.0, (len(x) - 1) / 3))
        mean, components = axes.get(name, axes["clean"])
        projection = (features.double() - mean) @ components                    # (N, 2)
        explained = projection.var(0).sum() / (features.double() - features.double().mean(0)).var(0).sum()
        tsne[name] = {"embedding": embedding, "pca": projection.float(), "pca_explained": explained.item(),
                      "latent": metrics.cluster_stats(features, labels.to(features.device)),
                      "tsne": metrics.cluster_stats(torch.from_numpy(embedding), labels)}
    return {**tsne, "latent_size": sets["clean"].shape[1]}


@torch.no_grad()
def measure_worked_example(run):
    """PSNR and SSIM of the first test image step by step (DvM's sample calculation): SSIM's two factors and
    their product, each averaged over metrics.ssim's windows."""
    torch.manual_seed(0)
    x = test_images(run.data, 1)
    recon = run.model(x)[1]["recon"].float()
    mse = (recon - x).pow(2).mean().item()
    brightness, contrast_structure = metrics.ssim_maps(recon, x)
    return {"mse": mse, "psnr": 10 * math.log10(1 / max(mse, 1e-10)), "brightness": brightness.mean().item(),
            "contrast_structure": contrast_structure.mean().item(), "ssim": (brightness * contrast_structure).mean().item()}


def measure(run, tsne_per_class, tsne_iters):
    """Every number the figures and report.md show of one run, computed once: a plain (json) dict of the run
    (name, kind, config, log, results.json, ...) and tsne, worked_example, noise (AE, DAE), masking."""
    analysis = {"name": run.name, "kind": run.kind, "feature": feature_name(run.kind, run.config), "dataset":
                run.args["dataset"], "classes": run.data.classes, "config": run.config,
                "epochs": run.log[-1]["epoch"] if run.log else run.args["epochs"],
                "log": run.log, "results": run.results, "tsne": measure_tsne(run, tsne_per_class, tsne_iters),
                "worked_example": measure_worked_example(run)}
    if run.kind in ("ae", "dae"):  # the probe: no more clean training images than the run saw
        x = test_images(run.data, N_MEASURE)
        recon, noisy = psnr_against_noise(run.model, x, NOISE_VARIANCES)
        analysis["noise"] = {"n_images": len(x), "psnr": recon, "input_psnr": noisy, "probe": probe_under_noise(
            run, NOISE_VARIANCES, min(5000, run.args["train_size"] or 5000))}
    if run.kind in ("ae", "mcae", "mae"):
        analysis["masking"] = measure_masking(run)
    return plain(analysis)


# -----------------------------------------------------------------------------
# per-run figures: each runs the model on test images and hands figures.py the pictures, or returns None
# where it does not apply


@torch.no_grad()
def reconstructions(run, analysis, path):
    """original / what the encoder saw / reconstruction (DvM, C10, MLP)"""
    x, names = shown_images(run.data)
    torch.manual_seed(0)  # the same noise / masks every time the figure is drawn
    _, out = run.model(x)
    rows, score = {"original": x}, f"PSNR {metrics.psnr(out['recon'], x).mean():.1f} dB"
    if "mask" in out and out["mask"].any():  # a ratio-0 MCAE hides nothing: no row for it
        rows["masked input\n(hidden: blue)"] = figures.mark_hidden(out["input"], out["mask"])
        score = f"PSNR on hidden pixels {torch.nanmean(metrics.hidden_psnr(out['recon'], x, out['mask'])):.1f} dB"
    elif not torch.equal(out["input"], x):  # AE and VAE see the image itself: no row
        rows["noisy input"] = out["input"]
    if "prediction" in out:  # the MAE predicts every patch; its reconstruction keeps the visible ones
        rows["prediction\n(every patch)"] = out["prediction"]
    rows["reconstruction" + ("\n(visible patches\npasted back)" if "prediction" in out else "")] = out["recon"]
    return figures.grid_figure([list(r) for r in rows.values()], path, list(rows), names,
                               f"{run.name}: reconstructions of test images ({score}, mean of these {len(x)})")


def tsne(run, analysis, path):
    """t-SNE of the features beside raw pixels; an AE or DAE: of noisy images too (DvM, C10)"""
    return figures.plot_embedding(analysis, path, "embedding")


def pca(run, analysis, path):
    """the same points on their first two principal components (C10: "t-SNE or PCA")"""
    return figures.plot_embedding(analysis, path, "pca")


def saliency(run, analysis, path):
    """AE, DAE, VAE, MCAE: how strongly each pixel moves the latent code (DvM)"""
    if run.kind == "mae":
        return None
    x, _ = shown_images(run.data)
    energy = metrics.jacobian_energy(run.model.encode, x).detach()
    return figures.grid_figure([list(x), list(figures.heat_images(unit_range(energy)))], path, ["input", "saliency"],
                               title=f"{run.name}: saliency, sum over latent units of (d z / d pixel)^2",
                               heat_label="saliency (per image, 0-1)")


def attention(run, analysis, path, n=4):
    """MAE: last-layer CLS attention per head times the image, each map scaled to [0, 1], as DvM drew it

    Each image whole, and masked at the training ratio (hidden patches blue). A map is a head's attention on
    each patch times the pixels, scaled per map: where a head looks, not how much."""
    if run.kind != "mae":
        return None
    (x, names), ratio = shown_images(run.data, n), run.config["mask_ratio"]
    rows = []
    for maps, mask in [cls_attention(run.model, x), cls_attention(run.model, x, ratio)]:  # (n, heads, H, W), (n, 1, H, W)
        seen = x * (1 - mask)
        rows += [[image, *figures.heat_images(image_maps, hidden=image_mask.expand_as(image_maps))] for image, image_maps,
                 image_mask in zip(figures.mark_hidden(seen, mask), unit_range(maps * seen.mean(1, keepdim=True)), mask)]
    return figures.grid_figure(rows, path, [f"{name}, {what}" for what in ("whole", "masked") for name in names],
                               ["input"] + [f"head {h + 1}" for h in range(len(rows[0]) - 1)],
                               f"{run.name}: last-layer CLS attention x the image, per head, each map scaled to [0, 1]; "
                               f"whole, and with {ratio:.0%} of patches hidden (blue)",
                               heat_label="attention x pixel (each map 0-1)", cell=1.3)


def weights(run, analysis, path):
    """histogram of every weight tensor, no norm layers, no biases (DvM)"""
    named = [(f"{name}.weight", m.weight.detach().float().cpu().numpy()) for name, m in run.model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    return figures.plot_weights(named, run.name, path)


@torch.no_grad()
def interpolation(run, analysis, path, steps=10):
    """models with a decoder: the decoded line between two test images' latents (C10)"""
    labels, classes = run.data.test_y.cpu(), run.data.classes
    pairs = [(a, b) for a, b in INTERPOLATION_PAIRS if (labels == a).any() and (labels == b).any()]
    if not hasattr(run.model, "decode") or not pairs:
        return None
    rows, t = [], torch.linspace(0, 1, steps, device=run.data.test_x.device)
    for a, b in pairs:
        images = test_images(run.data, torch.stack([torch.nonzero(labels == c)[0, 0] for c in (a, b)]))
        z = run.model.encode(images)  # (2, D)
        rows.append([images[0], *run.model.decode((1 - t[:, None]) * z[0] + t[:, None] * z[1]), images[1]])
    return figures.grid_figure(rows, path, [f"{classes[a]}\nto {classes[b]}" for a, b in pairs],
                               ["image A"] + [f"t={v:.2f}" for v in t.tolist()] + ["image B"],
                               title=f"{run.name}: decoded (1-t) z_A + t z_B between two test images")


@torch.no_grad()
def arithmetic(run, analysis, path):
    """models with a decoder: class-mean latent arithmetic, e.g. dog - cat + bird (C10)"""
    # your own folder: the first three classes, a - b + c
    names, labels = ARITHMETIC.get(run.args["dataset"], tuple(run.data.classes[:3])), run.data.test_y.cpu()
    ids = [run.data.classes.index(name) for name in names]
    if not hasattr(run.model, "decode") or len(ids) < 3 or not all((labels == c).any() for c in ids):
        return None
    means = [in_batches(run.model.encode, test_images(run.data, torch.nonzero(labels == c).flatten()[:1000])).mean(0)
             for c in ids]  # over (at most) the first 1000 test images of each class
    decoded = run.model.decode(torch.stack(means + [means[0] - means[1] + means[2]]))
    return figures.grid_figure([list(decoded)], path,
                               col_labels=[f"mean {name}" for name in names] + [f"{names[0]} - {names[1]}\n+ {names[2]}"],
                               title=f"{run.name}: class-mean latent arithmetic", cell=1.6)


@torch.no_grad()
def vae_samples(run, analysis, path, n=8):
    """VAE: images decoded from the prior (C10)"""
    if run.kind != "vae":
        return None
    torch.manual_seed(0)
    samples = run.model.sample(n * n)  # (n * n, C, H, W)
    return figures.grid_figure([list(samples[i * n:(i + 1) * n]) for i in range(n)], path,
                               title=f"{run.name}: {n * n} samples, z ~ N(0, I) decoded", cell=0.8)


def error_heatmaps(run, analysis, path, n=6):
    """MCAE, MAE: per-pixel squared error at mask ratios 0.1, 0.3, 0.5 and the trained one (C10)"""
    if run.kind not in ("mcae", "mae"):
        return None
    (x, _), trained = shown_images(run.data, n), run.config["mask_ratio"]
    setting = analysis["masking"]["settings"][-1]  # the run's own kind of mask, at the assignment's and its ratio
    scores = {s["mask_ratio"]: s for s in analysis["masking"]["settings"]
              if s["mask_type"] == setting["mask_type"] and s["mask_ratio"] in MASK_RATIOS + [trained]}
    shown = [masked_reconstruction(run.model, x, ratio, setting["mask_type"], setting["block_size"]) for ratio in scores]
    errors = [(recon - x).pow(2).mean(1) for _, recon, _ in shown]  # (n, H, W), averaged over channels
    # linear up to the 99.5th percentile: a few outliers should not wash out the rest
    scale = Normalize(0, max(torch.stack(errors).quantile(0.995).item(), 1e-3), clip=True)
    rows, labels = [], []  # beside each hidden PSNR, what leaving the holes black scores
    for (ratio, score), (inp, recon, mask), error in zip(scores.items(), shown, errors):
        rows += [list(figures.mark_hidden(inp, mask)), list(recon), list(figures.heat_images(error, scale))]
        labels += [f"ratio {ratio}{' (trained)' if ratio == trained else ''}:\ninput (hidden: blue)", "reconstruction",
                   f"squared error\nhidden PSNR {score['hidden_psnr']:.1f} dB\n(black fill "
                   f"{score['black_fill_hidden_psnr']:.1f} dB)"]
    return figures.grid_figure(rows, path, labels, title=f"{run.name}: per-pixel squared error at mask ratios "
                               f"{', '.join(map(str, scores))}, trained at {trained}\n(PSNRs over the first "
                               f"{analysis['masking']['n_images']} test images)", heat_scale=scale,
                               heat_label="squared error")


PER_RUN_FIGURES = {"reconstructions": reconstructions, "tsne": tsne, "pca": pca, "saliency": saliency,
                   "attention": attention, "weights": weights,
                   "interpolation": interpolation, "arithmetic": arithmetic, "vae_samples": vae_samples,
                   "error_heatmaps": error_heatmaps}

# -----------------------------------------------------------------------------
# figures comparing runs: from the analyses alone, or with images the models make here


@torch.no_grad()
def vae_vs_ae(runs, analyses, path):
    """a VAE and an AE of one dataset: originals and both reconstructions (C10)"""
    for vae in (run for run in runs if run.kind == "vae"):
        # an AE run, or an MCAE run with nothing masked (the same model)
        ae = next((run for run in runs if run.args["dataset"] == vae.args["dataset"] and (
            run.kind == "ae" or (run.kind == "mcae" and run.config["mask_ratio"] == 0))), None)
        if ae is not None:
            x, _ = shown_images(vae.data)
            recons = [vae.model(x)[1]["recon"], ae.model(x)[1]["recon"]]
            return figures.grid_figure([list(x)] + [list(r) for r in recons], path, ["original"] + [
                f"{what} ({run.name})\nPSNR {metrics.psnr(recon, x).mean():.1f} dB"
                for what, run, recon in zip(("VAE", "AE"), (vae, ae), recons)],
                title="VAE against AE reconstructions of the same test images")
    return None


@torch.no_grad()
def three_levels(runs, analyses, path):
    """MCAE runs hiding nothing, random pixels and blocks (Mask); of several at a level, the most masked"""
    by_dataset = {}
    for run in sorted((run for run in runs if run.kind == "mcae"), key=lambda run: run.config["mask_ratio"]):
        level = "identity" if run.config["mask_ratio"] == 0 else run.config["mask_type"]
        by_dataset.setdefault(run.args["dataset"], {})[level] = run
    levels = next((levels for levels in by_dataset.values() if len(levels) == 3), None)
    if levels is None:
        return None
    rows, labels = [], []
    for level, name in [("identity", "1. identity"), ("pixel", "2. random pixels"), ("block", "3. blocks")]:
        run, config, results = levels[level], levels[level].config, levels[level].results
        torch.manual_seed(0)
        _, out = run.model(shown_images(run.data)[0])
        hidden = "nothing hidden" if level == "identity" else f"{config['mask_ratio']:.0%} hidden in {level}s" + (
            f"\nof {config['block_size']}x{config['block_size']}" if level == "block" else "") + " (blue)"
        score = figures.fmt(results.get("psnr" if level == "identity" else "psnr_hidden"), 1)
        rows += [list(figures.mark_hidden(out["input"], out["mask"])), list(out["recon"])]
        labels += [f"{name}: {run.name}\n{hidden}", f"reconstruction\n{'' if level == 'identity' else 'hidden '}"
                   f"PSNR {score} dB"]
    return figures.grid_figure(rows, path, labels, title="three levels of reconstruction difficulty (MCAE), test PSNR "
                               "over the whole test set")


@torch.no_grad()
def cnn_vs_vit_masking(runs, analyses, path, ratios=(0.25, 0.5, 0.75)):
    """an MCAE and an MAE shown the same images with the same patches hidden (C10)

    Does CNN-based masking keep global information as a ViT does? The MCAE trained nearest the MAE's ratio
    gets the MAE's very holes; both keep the visible pixels. Hidden PSNR over N_MEASURE test images."""
    for vit in (run for run in runs if run.kind == "mae"):
        cnns = [run for run in runs if run.kind == "mcae" and run.config["mask_ratio"] > 0
                and run.args["dataset"] == vit.args["dataset"]]
        if not cnns:
            continue
        cnn = min(cnns, key=lambda run: (abs(run.config["mask_ratio"] - vit.config["mask_ratio"]),
                                         run.config["mask_type"] != "block"))  # blocks: the nearest to patches
        x, shown = test_images(vit.data, N_MEASURE), class_indices(vit.data.test_y, 6).to(vit.data.test_x.device)
        rows, labels = [list(x[shown])], ["original"]
        for ratio in ratios:
            seen, vit_recon, mask = masked_reconstruction(vit.model, x, ratio)  # seen: x with the holes
            cnn_recon = seen + in_batches(lambda batch: cnn.model.decoder(cnn.model.encoder(batch)), seen) * mask
            scores = [metrics.hidden_scores(recon, x, mask)["hidden_psnr"] for recon in (cnn_recon, vit_recon)]
            rows += [list(figures.mark_hidden(seen[shown], mask[shown])), list(cnn_recon[shown]), list(vit_recon[shown])]
            labels += [f"{ratio:.0%} of patches\nhidden (blue)", f"CNN: {cnn.name}\nhidden PSNR {scores[0]:.1f} dB",
                       f"ViT: {vit.name}\nhidden PSNR {scores[1]:.1f} dB"]
        return figures.grid_figure(rows, path, labels, title=f"the same holes for a CNN (MCAE) and a ViT (MAE), "
                                   f"{vit.args['dataset']}; hidden PSNR over the first {len(x)} test images")
    return None


@torch.no_grad()
def linear_ae_vs_pca(runs, analyses, path, n_fit=10000):
    """a linear AE beside PCA with as many components, and an MLP AE of the same size (Mask)

    A linear AE trained on the squared error spans the top principal components' subspace (Baldi & Hornik
    1989); their overlap, the mean squared cosine of the principal angles (1 = the same), says how close
    training came. PCA is fitted on at most n_fit training images; PSNRs over N_MEASURE test images."""
    for linear in (run for run in runs if run.config.get("arch") == "linear"):
        k, dataset = linear.config["latent_dim"], linear.args["dataset"]
        mean, components = metrics.pca(to_float(linear.data.train_x[:min(n_fit, linear.args["train_size"] or n_fit)]), k)
        x = test_images(linear.data, N_MEASURE)
        projected = (x.flatten(1).double() - mean) @ components                             # (N, k)
        recons = {f"PCA, {k} components": (projected @ components.T + mean).float().view_as(x).clamp(0, 1)}
        for run in [linear] + [run for run in runs if run.kind == "ae" and run.config.get("arch") == "mlp"
                               and run.config["latent_dim"] == k and run.args["dataset"] == dataset][:1]:
            recons[f"{run.config['arch']} AE: {run.name}"] = in_batches(lambda batch: run.model(batch)[1]["recon"], x)
        decoder = linear.model.decoder[0].weight.double()                                   # (D, k): its span
        overlap = (torch.linalg.svdvals(components.T @ torch.linalg.qr(decoder).Q) ** 2).mean().item()
        shown = class_indices(linear.data.test_y, 8).to(x.device)
        return figures.grid_figure([list(x[shown])] + [list(r[shown]) for r in recons.values()], path, ["original"] + [
            f"{name}\nPSNR {metrics.psnr(r, x).mean():.2f} dB" for name, r in recons.items()],
            title=f"{dataset}: a linear AE with a {k}-d code against PCA with {k} components; the overlap of "
                  f"their subspaces is {overlap:.3f} (1 = the same)")
    return None


def from_analyses(plot):
    """A figure comparing runs drawn by figures.py from the analyses alone."""
    return functools.wraps(plot)(lambda runs, analyses, path: plot(analyses, path))


COMPARISON_FIGURES = {
    "psnr_per_epoch": from_analyses(figures.plot_psnr_per_epoch), "loss_per_epoch": from_analyses(figures.plot_loss_per_epoch),
    "best_psnr_per_epoch": from_analyses(figures.plot_best_psnr_per_epoch),
    "psnr_vs_noise": from_analyses(figures.plot_psnr_vs_noise), "mask_ratios": from_analyses(figures.plot_mask_ratios),
    "cnn_vs_vit_masking": cnn_vs_vit_masking, "vae_vs_ae": vae_vs_ae, "three_levels": three_levels,
    "linear_ae_vs_pca": linear_ae_vs_pca, "when_mae_fails": from_analyses(figures.plot_when_mae_fails)}

# -----------------------------------------------------------------------------
# command line


def figure_list(heading, plots):
    """--help's list of figures: each name with the first line of its function's docstring."""
    return "\n".join([heading] + [f"  {name + '.png':<24} {inspect.getdoc(plot).splitlines()[0]}"
                                  for name, plot in plots.items()])


def parse_args(argv=None):
    epilog = "\n\n".join([figure_list("Per run, in RUN_DIR/figures/ (where it applies):", PER_RUN_FIGURES),
                          figure_list("Comparing the runs, in --out/figures/ (where it applies):", COMPARISON_FIGURES),
                          "and --out/report.md: the runs' numbers beside their baselines, tables and clusters."])
    p = Parser(description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
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
