"""
Every figure and table of the four autoencoder studies nanoAE reproduces, drawn from finished runs.
In brackets, the studies that show each one: DvM = the DAE-vs-MAE study (MNIST, CIFAR-10),
Mask = the masking tutorial (three levels of masking), C10 = the CIFAR-10 AE/DAE/VAE/MCAE assignment,
MLP = the report on MLP denoising AEs (MNIST, Fashion-MNIST).

    python analyze.py out/ae-fashion-mnist out/dae-fashion-mnist out/mae-fashion-mnist

Measure once, then draw: `measure` computes a run's numbers into a plain dict, saved as
RUN_DIR/analysis.json; figures.py draws the figures from it (and from the runs' models and test images,
which inspection.py picks and runs through the models for both), and report.md is written from those
dicts alone.

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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate
import loop
import metrics
import train
from data import Data, RunError, load_data, to_float
from drawing import fmt
from figures import COMPARISON_FIGURES, PER_RUN_FIGURES
from inspection import (MASK_RATIOS, NOISE_VARIANCES, in_batches, is_masked, masked_reconstruction, rank_in_class,
                        test_images)

DEFAULT_NOISE_STD = 0.316                     # t-SNE of noisy inputs for models trained without noise: variance 0.1


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


def balanced_indices(labels, per_class):
    """The first per_class test images of every class (fewer where a class has fewer), class by class."""
    first = torch.nonzero(rank_in_class(labels) < per_class).flatten()
    return first[torch.argsort(labels.cpu()[first], stable=True)]


def add_noise(x, std):
    return (x + std * torch.randn_like(x)).clamp(0, 1)  # clipped, as dae.py: still an image


# -----------------------------------------------------------------------------
# measuring: a run's numbers into a plain dict, RUN_DIR/analysis.json. Inputs are corrupted here, by
# arguments (MAE.forward's mask_ratio, mcae.random_mask in inspection.masked_reconstruction, add_noise), never
# by changing a model's config.


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
# report.md: from the analysis dicts alone


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
        analyses, figures = [], {}
        for run in runs:
            print(f"{run.name}: {evaluate.dead_run_warning(run.results) or 'measuring'}")
            analyses.append(measure(run, args.tsne_per_class, args.tsne_iters))
            with open(os.path.join(run.path, "analysis.json"), "w") as f:
                json.dump(analyses[-1], f, indent=1)
            figures[run.name] = draw(PER_RUN_FIGURES, (run, analyses[-1]), run.path)
        figures["comparing runs"] = draw(COMPARISON_FIGURES, (runs, analyses), args.out)
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
