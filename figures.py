"""
Every figure analyze.py draws, from the dicts analyze.measure makes (RUN_DIR/analysis.json) and, for the
figures that show images, from the runs' models and test images (picked and run through the models by
inspection.py), with the building blocks of drawing.py (panels, saving, heatmap colours, image grids).
analyze.py's docstring lists the figures (python analyze.py --help).

A per-run figure is plot_x(run, analysis, path), a figure comparing runs plot_x(runs, analyses, path):
each returns the path it wrote, or None where it does not apply (PER_RUN_FIGURES, COMPARISON_FIGURES).
A run is an analyze.Run (model, kind, config, args, log, results, data); this module does not import
analyze.py, which imports it.
"""
import numpy as np
import torch
import torch.nn as nn
from matplotlib.colors import LogNorm, Normalize

import metrics
from drawing import draw_grid, finish_axes, fmt, grid_figure, heat_images, mark_hidden, panels, save
from inspection import (MASK_RATIOS, NOISE_VARIANCES, class_indices, cls_attention, in_batches, is_masked,
                        jacobian_energy, masked_reconstruction, test_images)

N_IMAGES = 8                                  # test images per image figure
AE_FAMILY = ("ae", "dae", "vae", "mcae")      # encoders that saliency maps are drawn for
# class-mean latent arithmetic a - b + c, by class name: the CIFAR-10 assignment's dog - cat + bird, and
# one triple in the same spirit for the other datasets (what b lacks and a has, added to c)
ARITHMETIC = {"mnist": ("7", "1", "0"), "fashion-mnist": ("Ankle boot", "Sneaker", "Sandal"),
              "cifar10": ("dog", "cat", "bird"), "cifar10-jitter": ("dog", "cat", "bird")}
INTERPOLATION_PAIRS = [(0, 1), (3, 5), (7, 9)]  # class indices of the image pairs to interpolate between


# -----------------------------------------------------------------------------
# per-run figures, plot_x(run, analysis, path): each returns the path written, or None when the figure
# does not apply to the run


@torch.no_grad()
def plot_reconstructions(run, analysis, path):
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
    return grid_figure(rows + [list(out["recon"])], path, labels + ["reconstruction"],
                       [run.data.classes[y] for y in run.data.test_y[idx.to(run.data.test_y.device)]],
                       f"{run.name}: reconstructions of test images ({score}, mean of these {len(idx)})")


def plot_tsne(run, analysis, path):
    tsne, classes = analysis["tsne"], run.data.classes
    labels, per_class = np.array(tsne["labels"]), [c for c in tsne["per_class"] if c]
    fig, axes = panels(2, 5, 4.8)
    for ax, name in zip(axes, ("clean", "noisy")):
        embedding = np.array(tsne[name]["embedding"])
        for c, class_name in enumerate(classes):
            ax.scatter(*embedding[labels == c].T, s=5, color=f"C{c % 10}", label=class_name, alpha=0.8,
                       linewidths=0)
        noise = f" (noise std {tsne['noise_std']:.2f})" if name == "noisy" else ""
        ax.set(title=f"{name} test images{noise}\nsilhouette {tsne[name]['latent']['silhouette']:.2f} in the "
               "latent space", xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", markerscale=3, title="class")
    what = "CLS token" if run.kind == "mae" else "mean of q(z|x)" if run.kind == "vae" else "latent code"
    # the real count: a small test set may hold fewer than --tsne-per-class images of a class
    count = f"{max(per_class)}" if min(per_class) == max(per_class) else f"{min(per_class)} to {max(per_class)}"
    return save(fig, path, f"{run.name}: t-SNE of the {what}, {len(labels)} test images ({count} per class)")


def plot_saliency(run, analysis, path):
    if run.kind not in AE_FAMILY:
        return None
    x = test_images(run, class_indices(run.data.test_y, N_IMAGES))
    energy = jacobian_energy(run.model, x).detach()
    low, high = energy.amin(dim=(1, 2), keepdim=True), energy.amax(dim=(1, 2), keepdim=True)
    saliency = (energy - low) / (high - low).clamp(min=1e-12)  # each map to [0, 1]
    return grid_figure([list(x), list(heat_images(saliency))], path, ["input", "saliency"],
                       title=f"{run.name}: saliency, sum over latent units of (d z / d pixel)^2",
                       heat_label="saliency (per image, 0-1)")


def plot_attention(run, analysis, path, n=4):
    """Each image twice: whole, and masked at the training ratio as in pretraining (DvM)."""
    if run.kind != "mae":
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    ratio, rows = run.config["mask_ratio"], []
    # one log scale for all maps: a head spread evenly reads as mid-dark and a focused one as bright,
    # which each map's own 0 .. max would hide; hidden patches (weight 0) get the bottom colour
    scale = LogNorm(1 / 16, 32, clip=True)
    for maps, mask in (cls_attention(run.model, x), cls_attention(run.model, x, ratio)):
        rows += [[image, *heat_images(image_maps, scale)]
                 for image, image_maps in zip(mark_hidden(x * (1 - mask), mask), maps)]
    return grid_figure(rows, path, ["whole"] * n + ["masked"] * n,
                       ["input"] + [f"head {h + 1}" for h in range(len(rows[0]) - 1)],
                       f"{run.name}: last-layer CLS attention per head, on the whole image and with {ratio:.0%} of "
                       "patches hidden (blue)", heat_scale=scale, heat_label="attention / an even share (1 = "
                       "as if every patch seen got the same)", cell=1.3)


def plot_weights(run, analysis, path):
    """Every Linear / conv weight: no norm layers, no biases, no tokens (DvM)."""
    tensors = [(f"{name}.weight", m.weight.detach().float().cpu()) for name, m in run.model.named_modules()
               if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]
    fig, axes = panels(len(tensors), 2.3, 1.7, per_row=6)
    for ax, (name, w) in zip(axes, tensors):
        ax.hist(w.flatten().numpy(), bins=60, color="tab:blue")
        ax.set_title(f"{name}\n{'x'.join(map(str, w.shape))}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    return save(fig, path, f"{run.name}: weight histograms per layer (no norm layers, no biases)")


@torch.no_grad()
def plot_interpolation(run, analysis, path, steps=10):
    labels, classes = run.data.test_y.cpu(), run.data.classes
    pairs = [(a, b) for a, b in INTERPOLATION_PAIRS if (labels == a).any() and (labels == b).any()]
    if not hasattr(run.model, "decode") or not pairs:
        return None
    rows, t = [], torch.linspace(0, 1, steps)
    for a, b in pairs:
        images = test_images(run, torch.stack([torch.nonzero(labels == c)[0, 0] for c in (a, b)]))
        z = run.model.encode(images)  # (2, D)
        rows.append([images[0], *run.model.decode((1 - t[:, None]) * z[0] + t[:, None] * z[1]), images[1]])
    return grid_figure(rows, path, [f"{classes[a]}\nto {classes[b]}" for a, b in pairs],
                       ["image A"] + [f"t={v:.2f}" for v in t.tolist()] + ["image B"],
                       title=f"{run.name}: decoded (1-t) z_A + t z_B between two test images")


@torch.no_grad()
def plot_arithmetic(run, analysis, path):
    # your own folder: the first three classes, a - b + c
    names, labels = ARITHMETIC.get(run.args["dataset"], tuple(run.data.classes[:3])), run.data.test_y.cpu()
    ids = [run.data.classes.index(name) for name in names]
    if not hasattr(run.model, "decode") or len(ids) < 3 or not all((labels == c).any() for c in ids):
        return None
    # class means of the latents of (at most) the first 1000 test images of each class
    means = [in_batches(run.model.encode, test_images(run, torch.nonzero(labels == c).flatten()[:1000])).mean(0)
             for c in ids]
    decoded = run.model.decode(torch.stack(means + [means[0] - means[1] + means[2]]))
    return grid_figure([list(decoded)], path,
                       col_labels=[f"mean {name}" for name in names] + [f"{names[0]} - {names[1]}\n+ {names[2]}"],
                       title=f"{run.name}: class-mean latent arithmetic", cell=1.6)


@torch.no_grad()
def plot_vae_samples(run, analysis, path, n=8):
    if run.kind != "vae":
        return None
    torch.manual_seed(0)
    samples = run.model.sample(n * n)
    return grid_figure([list(samples[i * n:(i + 1) * n]) for i in range(n)], path,
                       title=f"{run.name}: {n * n} samples, z ~ N(0, I) decoded", cell=0.8)


def plot_error_heatmaps(run, analysis, path, n=6):
    if run.kind not in ("mcae", "mae"):
        return None
    x = test_images(run, class_indices(run.data.test_y, n))
    # the run's own kind of mask, as measure_masking (a ratio-0 MCAE: its 8x8 blocks)
    setting = analysis["masking"]["settings"][-1]
    scores = {s["mask_ratio"]: s for s in analysis["masking"]["settings"] if s["mask_type"] == setting["mask_type"]}
    shown = [masked_reconstruction(run.model, x, ratio, setting["mask_type"], setting["block_size"])
             for ratio in MASK_RATIOS]
    errors = [(recon - x).pow(2).mean(1) for _, recon, _ in shown]  # (n, H, W), averaged over channels
    # linear up to the 99.5th percentile: a few outliers should not wash out the rest
    scale = Normalize(0, max(torch.stack(errors).quantile(0.995).item(), 1e-3), clip=True)
    rows, labels = [], []
    for ratio, (inp, recon, mask), error in zip(MASK_RATIOS, shown, errors):
        rows += [list(mark_hidden(inp, mask)), list(recon), list(heat_images(error, scale))]
        score = scores[ratio]  # beside what leaving the holes black scores: high where they hit background
        labels += [f"ratio {ratio}: input\n(hidden: blue)", "reconstruction", f"squared error\nhidden PSNR "
                   f"{score['hidden_psnr']:.1f} dB\n(black fill {score['black_fill_hidden_psnr']:.1f} dB)"]
    return grid_figure(rows, path, labels,
                       title=f"{run.name}: per-pixel squared error at mask ratios {', '.join(map(str, MASK_RATIOS))}\n"
                             f"(PSNRs over the first {analysis['masking']['n_images']} test images)",
                       heat_scale=scale, heat_label="squared error")


PER_RUN_FIGURES = {"reconstructions": plot_reconstructions, "tsne": plot_tsne, "saliency": plot_saliency,
                   "attention": plot_attention, "weights": plot_weights, "interpolation": plot_interpolation,
                   "arithmetic": plot_arithmetic, "vae_samples": plot_vae_samples, "error_heatmaps": plot_error_heatmaps}


# -----------------------------------------------------------------------------
# figures comparing runs, plot_x(runs, analyses, path): the path written, or None


def draw_per_epoch(groups, title, path):
    """One panel per group {ylabel: [(run, colour, [(log key, line style)])]}, a curve per run and key."""
    fig, axes = panels(len(groups), 5.5, per_row=3)
    for ax, (ylabel, members) in zip(axes, groups.items()):
        for run, colour, series in members:
            for i, (key, style) in enumerate(series):
                ax.plot([e["epoch"] for e in run.log], [e[key] for e in run.log], color=colour, linestyle=style,
                        marker="o", markersize=3, label=None if i else run.name)
        finish_axes(ax, epochs=True, ylabel=ylabel)
    return save(fig, path, title)


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
        finish_axes(ax, xlabel="noise variance (std = sqrt(variance))", ylabel="PSNR (dB)", xticks=NOISE_VARIANCES)
    return save(fig, path, "denoising: reconstruction PSNR against input noise")


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
    return save(fig, path, "MLP autoencoders: reconstruction against latent size")


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
        finish_axes(ax, title=f"{dataset}, {mask_type} masks", xlabel="test mask ratio",
                    ylabel="PSNR on hidden pixels (dB)")
    return save(fig, path, f"MCAE runs trained at different mask ratios, first {a['masking']['n_images']} test images")


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
    fig, axes = panels(3, 1.5 + N_IMAGES, 2.4, per_row=1)
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
    return save(fig, path, "three levels of reconstruction difficulty (MCAE)", fontweight="bold")


COMPARISON_FIGURES = {"psnr_per_epoch": plot_psnr_per_epoch, "loss_per_epoch": plot_loss_per_epoch,
                      "psnr_vs_noise": plot_psnr_vs_noise, "psnr_per_latent": plot_psnr_per_latent,
                      "mask_ratios": plot_mask_ratios, "vae_vs_ae": plot_vae_vs_ae,
                      "three_levels": plot_three_levels}
