"""
Drawing what analyze.py measured: every figure (matplotlib) and report.md. Nothing here runs a model or
reads a dataset: each function takes arrays, or the plain dicts analyze.measure makes (RUN_DIR/analysis.json,
with the run's log, results and config), and writes one file. In order: the building blocks (panels, heat
colours, grids of images), per-run figures from numbers, figures comparing runs, and report.md.
"""
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid

plt.rcParams.update({"font.size": 9, "axes.titlesize": 9, "figure.titlesize": 11, "legend.fontsize": 8,
                     "axes.formatter.useoffset": False})  # flat curves: 9.5589, not "1e-5 + 9.5589"

NOISE_VARIANCES = [0.01, 0.02, 0.05, 0.1]     # the MLP report's noise levels, as variances
MASK_RATIOS = [0.1, 0.3, 0.5]                 # the CIFAR-10 assignment's MCAE mask ratios


def is_masked(kind, config):
    """Masked models are scored on the hidden pixels: a whole-image PSNR counts the visible part too."""
    return kind == "mae" or (kind == "mcae" and config["mask_ratio"] > 0)


def fmt(value, digits=4):
    """A number for a title or report.md's tables: "–" where there is none; digits None: 12,345."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,}" if digits is None else f"{value:.{digits}f}"


# -----------------------------------------------------------------------------
# building blocks


def panels(n, width=6, height=4, per_row=None):
    """A figure of n panels of width x height inches, per_row to a row (default: all in one); the places
    of the last row that no panel fills are left blank. -> (figure, the axes in reading order)"""
    n_rows, n_cols = math.ceil(n / (per_row or n)), min(per_row or n, n)
    fig = plt.figure(figsize=(width * n_cols, height * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes


def save(fig, path, title, **style):
    """The figure with its title (style: fig.suptitle's options) to path as a PNG, then closed: pyplot
    keeps every open figure, and a run of the analysis draws dozens."""
    fig.suptitle(title, **style)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)  # tight: no label is ever cut off
    plt.close(fig)
    print(f"wrote {path}")
    return path


HEAT_CMAP = plt.get_cmap("inferno")
HIDDEN_COLOUR = (0.2, 0.4, 0.8)  # hidden pixels, in images and heatmaps alike
UNIT_SCALE = matplotlib.colors.Normalize(0, 1, clip=True)  # heat 0 .. 1, linear; past either end: its end colour


def heat_images(heat, scale=UNIT_SCALE, hidden=None):
    """Heatmaps (B, H, W) -> (B, 3, H, W) colours of HEAT_CMAP on the colour scale `scale` (a matplotlib
    Normalize); where hidden (B, H, W) is 1, HIDDEN_COLOUR instead, so a hidden pixel never reads as a cold
    one. Drawn on their own, not blended over the image, where bright strokes would look hot."""
    heat = heat.detach().float().cpu().numpy()
    # flat in, shape back: a log scale takes 1-D arrays only; masked values (<= 0 on a log scale) -> bottom
    levels = scale(heat.ravel()).filled(0).reshape(heat.shape)
    colours = torch.from_numpy(HEAT_CMAP(levels)[..., :3]).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
    if hidden is not None:
        colours = mark_hidden(colours, hidden.cpu().float().unsqueeze(1))
    return colours


def mark_hidden(images, mask):
    """Images (B, C, H, W) with their hidden pixels (mask (B, 1, H, W) = 1) painted HIDDEN_COLOUR: the
    encoder saw zeros there, but black holes vanish into a black background. -> (B, 3, H, W)"""
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


def grid_figure(rows, path, row_labels=(), col_labels=(), title="", heat_scale=UNIT_SCALE, heat_label=None, cell=1.0):
    """A figure of one grid (draw_grid) with its title and, for heatmaps, a colour bar of heat_scale; to path."""
    fig, (ax,) = panels(1, (1.3 if row_labels else 0.2) + (1.0 if heat_label else 0) + cell * len(rows[0]),
                        0.5 + cell * len(rows) + (0.35 if col_labels else 0))
    draw_grid(ax, rows, row_labels, col_labels)
    if heat_label:
        bar = plt.cm.ScalarMappable(norm=heat_scale, cmap=HEAT_CMAP)
        fig.colorbar(bar, ax=ax, label=heat_label, shrink=0.8, aspect=30)
    return save(fig, path, title)


def finish_axes(ax, epochs=False, **properties):
    """The axes' properties (ax.set: labels, title, ticks), a grid, whole epochs on the x axis, and the
    legend to the right, where it cannot hide a curve."""
    ax.set(**properties)
    if epochs:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))


# -----------------------------------------------------------------------------
# per-run figures drawn from numbers


def plot_embedding(analysis, path, key):
    """A panel per set of points in 2-D by t-SNE (key 'embedding') or PCA ('pca'): the features of clean test
    images, of noisy ones (AE, DAE), and the same images' raw pixels, each with its silhouette (DvM, C10)."""
    tsne, classes, method = analysis["tsne"], analysis["classes"], "t-SNE" if key == "embedding" else "PCA"
    labels, per_class = np.array(tsne["labels"]), [c for c in tsne["per_class"] if c]
    names = [name for name in ("clean", "noisy", "pixels") if name in tsne]
    fig, axes = panels(len(names), 5, 4.8)
    what, trained = analysis["feature"], analysis["kind"] == "dae"
    for ax, name in zip(axes, names):
        embedding = np.array(tsne[name][key])
        for c, class_name in enumerate(classes):
            ax.scatter(*embedding[labels == c].T, s=5, color=f"C{c % 10}", label=class_name, alpha=0.8,
                       linewidths=0)
        title = {"clean": f"{what} ({tsne['latent_size']}-d)", "pixels": "raw pixels, the baseline",
                 "noisy": f"{what} of noisy images (std {tsne['noise_std']:.2f}), "
                          f"{'the noise it was trained on' if trained else 'never seen in training'}"}[name]
        if key == "pca":  # noisy latents on the clean latents' axes, so what noise moves shows as a shift
            title += f"\n{'on the clean axes; ' if name == 'noisy' else ''}{tsne[name]['pca_explained']:.0%} of the variance"
        ax.set(title=f"{title}\nsilhouette {tsne[name]['latent']['silhouette']:.2f} before {method}",
               xlabel=f"{method} 1", ylabel=f"{method} 2", xticks=[], yticks=[])
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", markerscale=3, title="class")
    # the real count: a small test set may hold fewer than --tsne-per-class images of a class
    count = f"{max(per_class)}" if min(per_class) == max(per_class) else f"{min(per_class)} to {max(per_class)}"
    return save(fig, path, f"{analysis['name']}: {method} of the {what} beside raw pixels, {len(labels)} test "
                f"images ({count} per class); silhouette -1 .. 1, higher = classes better apart")


def plot_weights(named_weights, name, path):
    """Histograms of weight tensors [(name, array)]: no norm layers, no biases, no tokens (DvM)."""
    fig, axes = panels(len(named_weights), 2.3, 1.7, per_row=6)
    for ax, (tensor_name, w) in zip(axes, named_weights):
        ax.hist(w.ravel(), bins=60, color="tab:blue")
        ax.set_title(f"{tensor_name}\n{'x'.join(map(str, w.shape))}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    return save(fig, path, f"{name}: weight histograms per layer (no norm layers, no biases)")


# -----------------------------------------------------------------------------
# figures comparing runs, from the analysis dicts: the path written, or None where none applies


def ends_of_sweep(members, most=8, analysis=lambda member: member):
    """More than `most` runs, a sweep, are drawn as its best and worst run by test PSNR (the MLP report's
    figure 3); fewer all. -> (members drawn, a note for the title)."""
    if len(members) <= most:
        return members, ""
    ranked = sorted(members, key=lambda m: analysis(m)["results"].get("psnr", -math.inf))
    return [ranked[-1], ranked[0]], f"\nthe best and the worst of {len(ranked)} runs"


def draw_per_epoch(groups, title, path):
    """One panel per group {(panel title, ylabel): [(analysis, colour, [(log key, line style)])]}, a curve
    per run and key (a sweep's best and worst)."""
    fig, axes = panels(len(groups), 5.5, per_row=3)
    for ax, ((panel_title, ylabel), members) in zip(axes, groups.items()):
        members, note = ends_of_sweep(members, analysis=lambda m: m[0])
        panel_title += note
        for a, colour, series in members:
            for i, (key, style) in enumerate(series):
                ax.plot([e["epoch"] for e in a["log"]], [e[key] for e in a["log"]], color=colour, linestyle=style,
                        marker="o", markersize=3, label=None if i else a["name"])
        finish_axes(ax, epochs=True, title=panel_title, ylabel=ylabel)
    return save(fig, path, title)


def plot_psnr_per_epoch(analyses, path):
    """test PSNR per epoch, a panel per dataset, masked models on hidden pixels (C10: error against epochs)"""
    groups = {}
    for i, a in enumerate(a for a in analyses if a["log"]):
        panel, key = f"{a['dataset']}: PSNR over the whole image", "psnr"
        if is_masked(a["kind"], a["config"]) and "psnr_hidden" in a["log"][0]:
            panel, key = f"{a['dataset']}, masked models: PSNR over the hidden pixels alone", "psnr_hidden"
        groups.setdefault((panel, "test PSNR (dB)"), []).append((a, f"C{i % 10}", [(key, "-")]))
    if not groups:
        return None
    return draw_per_epoch(groups, "test PSNR per epoch", path)


def plot_loss_per_epoch(analyses, path):
    """train and test loss per epoch, a panel per kind of loss; the VAE's KL and -log p(x|z) (C10, MLP fig. 3)"""
    groups = {}
    for i, a in enumerate(a for a in analyses if a["log"]):
        loss = ("negative ELBO (nats / image)" if a["kind"] == "vae" else "MSE on hidden pixels"
                if a["kind"] == "mae" or a["config"].get("loss_on") == "masked" else "MSE per pixel")
        terms = [("VAE: KL divergence (nats / image)", "kl"), ("VAE: -log p(x|z) (nats / image)", "recon_loss")]
        for ylabel, train_key, test_key in [(loss, "train_loss", "test_loss")] + [
                (ylabel, key, f"test_{key}") for ylabel, key in terms if a["kind"] == "vae"]:
            groups.setdefault((ylabel.split(" (")[0], ylabel), []).append(
                (a, f"C{i % 10}", [(train_key, "-"), (test_key, "--")]))
    return draw_per_epoch(groups, "loss per epoch: train (solid) and test (dashed)", path) if groups else None


def plot_psnr_vs_noise(analyses, path):
    """AE, DAE: PSNR against test noise variance; the best DAE at each training noise (MLP fig. 5)"""
    trained = {}
    for a in analyses:
        if a["kind"] == "dae" and "psnr" in a["results"]:
            points = trained.setdefault(a["dataset"], {})
            variance = round(a["config"]["noise_std"] ** 2, 3)
            points[variance] = max(points.get(variance, -math.inf), a["results"]["psnr"])
    tested, note = ends_of_sweep([a for a in analyses if "noise" in a])
    if not tested:
        return None
    fig, axes = panels(1 + bool(trained))
    for a in tested:
        axes[0].plot(NOISE_VARIANCES, a["noise"]["psnr"], marker="o", label=a["name"])
    for dataset, style in zip(dict.fromkeys(a["dataset"] for a in tested), ["--", ":", "-.", (0, (5, 1, 1, 1))]):
        axes[0].plot(NOISE_VARIANCES, next(a for a in tested if a["dataset"] == dataset)["noise"]["input_psnr"],
                     linestyle=style, color="gray", marker=".", label=f"noisy input ({dataset})")  # to beat
    axes[0].set_title(f"each run at every test noise, first {tested[0]['noise']['n_images']} test images{note}")
    for dataset, points in trained.items():
        axes[1].plot(*zip(*sorted(points.items())), marker="o", label=dataset)
        axes[1].set_title("the best DAE at each noise it was trained with, whole test set")
    for ax in axes:
        finish_axes(ax, xlabel="noise variance (std = sqrt(variance))", ylabel="PSNR (dB)", xticks=NOISE_VARIANCES)
    return save(fig, path, "denoising: reconstruction PSNR against input noise")


def mlp_sweeps(analyses):
    """MLP AEs and DAEs by sweep, {'<dataset>, 784-<hidden>-z, noise std <s>': {latent size z: [analyses]}}:
    the runs of one line differ in z and the L1 weight."""
    sweeps = {}
    for a in analyses:
        if a["kind"] in ("ae", "dae") and a["config"]["arch"] == "mlp" and "psnr" in a["results"]:
            hidden = "-".join(map(str, a["config"].get("hidden", ())))
            line = f"{a['dataset']}, 784-{hidden}-z, noise std {a['config'].get('noise_std', 0):g}"
            sweeps.setdefault(line, {}).setdefault(a["config"]["latent_dim"], []).append(a)
    return sweeps


def plot_best_psnr_per_epoch(analyses, path):
    """MLP AE, DAE: at each latent size z the best test PSNR per epoch over the L1 weights (MLP fig. 2)"""
    sweeps = {line: sweep for line, sweep in mlp_sweeps(analyses).items() if len(sweep) > 1}
    if not sweeps:
        return None
    fig, axes = panels(len(sweeps), 5.5, per_row=2)
    for ax, (line, sweep) in zip(axes, sweeps.items()):
        for d in sorted(sweep):
            epochs = min(len(a["log"]) for a in sweep[d])
            best = [max(a["log"][e]["psnr"] for a in sweep[d]) for e in range(epochs)]
            ax.plot(range(1, epochs + 1), best, marker="o", markersize=3, label=f"z = {d}")
        finish_axes(ax, epochs=True, title=line, ylabel="best test PSNR (dB) over L1")
    return save(fig, path, "MLP autoencoders: the best PSNR per epoch at each latent size")


def plot_when_mae_fails(analyses, path):
    """MAE: images whose object the masks hide; training mask ratio against accuracy (Mask)

    The masking tutorial's "when MAE fails" beside mask_ratios.png's over-masking: the hidden PSNR of images
    keeping most of their object and of those not (their share annotated); features against raw pixels."""
    maes = [a for a in analyses if a["kind"] == "mae" and "object_lost" in a["masking"]["settings"][0]]
    if not maes:
        return None
    ranked = sorted(maes, key=lambda a: a["config"]["mask_ratio"])
    fig, axes = panels(1 + (len(ranked) > 1), 6)
    rows, lost = ranked[-1]["masking"]["settings"], ranked[-1]["masking"]["lost"]
    for key, label in (("hidden_psnr_object_seen", "most of the object visible"),
                       ("hidden_psnr_object_lost", f"under {lost:.0%} of the object visible")):
        axes[0].plot([r["mask_ratio"] for r in rows], [r[key] for r in rows], marker="o", label=label)
    for r in rows:  # the share of images that lost their object at that ratio
        axes[0].annotate(f"{r['object_lost']:.0%}", (r["mask_ratio"], r["hidden_psnr_object_lost"]), fontsize=7,
                         textcoords="offset points", xytext=(4, -10))
    finish_axes(axes[0], title=f"{ranked[-1]['name']}: small objects lost (% of images: most of the object hidden)",
                xlabel="test mask ratio", ylabel="PSNR on hidden pixels (dB)")
    for key, probe in (("linear_acc", "linear"), ("knn_acc", "k-NN")) if len(ranked) > 1 else ():
        line, = axes[1].plot([a["config"]["mask_ratio"] for a in ranked], [a["results"].get(key) for a in ranked],
                             marker="o", label=f"{probe} probe on the features")
        axes[1].axhline(ranked[0]["results"].get("pixels_" + key, math.nan), color=line.get_color(), linestyle="--",
                        label=f"{probe} probe on raw pixels")
        finish_axes(axes[1], title="what the features are worth", xlabel="mask ratio in training",
                    ylabel="test accuracy")
    return save(fig, path, f"when MAE fails, first {ranked[-1]['masking']['n_images']} test images")


def plot_mask_ratios(analyses, path):
    """masked models trained at different mask ratios, tested at others; holes left black (C10, Mask)

    A panel per dataset and kind of mask: MCAE runs (plain AEs: trained at 0) at the assignment's ratios, MAE
    runs from a tenth of the patches hidden to nearly all (over-masking, the tutorial's "when MAE fails")."""
    groups = {(a["dataset"], a["config"].get("mask_type", "patch")): [] for a in analyses if is_masked(a["kind"], a["config"])}
    for (dataset, mask_type), members in groups.items():
        members += [(a, [s for s in a["masking"]["settings"] if s["mask_type"] == mask_type]) for a in analyses
                    if a["dataset"] == dataset and "masking" in a]
    if not groups:
        return None
    fig, axes = panels(len(groups), 6.5, per_row=3)
    for ax, ((dataset, mask_type), members) in zip(axes, groups.items()):
        for a, tested in sorted((m for m in members if m[1]), key=lambda m: m[0]["config"].get("mask_ratio", 0)):
            ax.plot([s["mask_ratio"] for s in tested], [s["hidden_psnr"] for s in tested], marker="o",
                    label=f"{a['name']} (trained at {a['config'].get('mask_ratio', 0):g})")
        ax.plot([s["mask_ratio"] for s in tested], [s["black_fill_hidden_psnr"] for s in tested], color="gray",
                linestyle="--", label="holes left black")
        finish_axes(ax, title=f"{dataset}, {mask_type} masks", xlabel="test mask ratio",
                    ylabel="PSNR on hidden pixels (dB)")
    return save(fig, path, f"masked models trained at different mask ratios, first {a['masking']['n_images']} "
                f"test images")


# -----------------------------------------------------------------------------
# report.md, from the analysis dicts alone


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""])


def best_reconstructions(analyses):
    """The best run of each group whose PSNRs compare: one dataset, masked models apart, on the hidden pixels
    (the MAE's whole-image PSNR counts the patches it copied). -> {(dataset, masked): (analysis, key)}"""
    best = {}
    for a in analyses:
        group = a["dataset"], is_masked(a["kind"], a["config"])
        key = "psnr_hidden" if group[1] else "psnr"
        if a["results"].get(key) is not None and (group not in best or a["results"][key] > best[group][0]["results"][key]):
            best[group] = (a, key)
    return best


def summary(analyses):
    """The best reconstruction among runs that compare, and each run's features against raw pixels."""
    sentences = []
    for (dataset, masked), (top, key) in best_reconstructions(analyses).items():
        what, pixels = ("masked model", " on the hidden pixels") if masked else ("model given whole or noisy images", "")
        sentences.append(f"On {dataset}, the best reconstruction by a {what} is {top['name']}'s, "
                         f"{top['results'][key]:.2f} dB PSNR{pixels} on the test set.")
    for a, r in ((a, a["results"]) for a in analyses if a["results"].get("pixels_knn_acc") is not None):
        sentences.append(f"{a['name']}'s features score {r['knn_acc']:.1%} on k-NN, "
                         f"{'above' if r['knn_acc'] >= r['pixels_knn_acc'] else 'below'} raw pixels' {r['pixels_knn_acc']:.1%}.")
    return " ".join(sentences)


def runs_section(analyses):
    """The runs and the settings that tell them apart (the MLP report's architecture, latent size, L1, noise)."""
    rows = []
    for a in analyses:
        config, results = a["config"], a["results"]
        arch = (f"ViT patch {config['patch_size']}, depth {config['depth']}" if a["kind"] == "mae" else "linear"
                if config["arch"] == "linear" else f"{config['arch']} " + "-".join(map(str, config[
                    "hidden" if config["arch"] == "mlp" else "channels"])))
        corruption = (f"noise std {config['noise_std']:.3g} (variance {config['noise_std'] ** 2:.2g})" if a["kind"] == "dae"
                      else f"{config.get('mask_type', 'patch')} mask {config['mask_ratio']}"
                      if is_masked(a["kind"], config) else "none")
        rows.append([a["name"], a["kind"], a["dataset"], arch, a["tsne"]["latent_size"], f"{config.get('l1', 0):g}",
                     corruption, fmt(results.get("train_size"), None), a["epochs"] or "–",
                     fmt(results.get("parameters"), None)])
    return ["## Runs", "", table(["run", "model", "dataset", "architecture", "latent size", "L1", "input corruption",
                                  "training images", "epochs", "parameters"], rows)]


def sweep_section(analyses):
    """The MLP report's table 1: on each dataset the best and the worst test PSNR of its MLP runs."""
    rows = []
    for dataset in dict.fromkeys(a["dataset"] for a in analyses):
        ranked = sorted((a for sweep in mlp_sweeps(analyses).values() for runs in sweep.values() for a in runs
                         if a["dataset"] == dataset), key=lambda a: a["results"]["psnr"])
        for label, a in [("best", ranked[-1]), ("worst", ranked[0])] if len(ranked) > 2 else []:
            c = a["config"]
            rows.append([dataset, label, fmt(a["results"]["psnr"], 2), f"784-{'-'.join(map(str, c['hidden']))}-z",
                         c["latent_dim"], f"{c['l1']:g}", f"{c.get('noise_std', 0) ** 2:.2g}", a["name"]])
    return ["## Best and worst PSNR of the MLP autoencoders", "", "As the MLP denoising report's table 1: over "
            "every MLP run of a dataset (architectures, latent sizes z, L1 weights, noise).", "",
            table(["dataset", "", "PSNR (dB)", "architecture", "z", "L1", "noise variance", "run"], rows)] if rows else []


def accuracy_section(analyses):
    """Each probe beside its baselines (raw pixels, the untrained encoder, the MAE's patch tokens), and
    fine-tuning (DvM's accuracy table)."""
    columns = [(prefix + key, f"{label}: {probe}") for prefix, label in
               [("", "features"), ("pixels_", "raw pixels"), ("init_", "untrained"), ("tokens_", "patch tokens")]
               for key, probe in [("linear_acc", "linear"), ("knn_acc", "k-NN")]] + [("finetune_acc", "fine-tune")]
    columns = [(key, label) for key, label in columns if any(key in a["results"] for a in analyses)]
    if not columns:
        return []
    return ["## Classification accuracy (test set)", "", "Features: the model's own vector (encode()); raw pixels "
            "and the same encoder at its initial weights, probed the same way, are what it must beat. Linear: "
            "logistic regression on standardised features; k-NN: 20 neighbours by cosine similarity. A run with "
            "`--epochs 0` is the from-scratch baseline of fine-tuning.", "",
            table(["run"] + [label for _, label in columns], [[a["name"]] + [fmt(a["results"].get(key)) for key, _ in columns]
                                                               for a in analyses])]


def reconstruction_section(analyses):
    rows = [[a["name"], fmt(r.get("psnr"), 2), fmt(r.get("ssim")), fmt(r.get("mse"), 5), fmt(r.get("l1"), 5),
             # no psnr_input: the encoder saw the clean image; 99.9: an MCAE hiding nothing (PSNR's 100 dB cap)
             "clean" if r.get("psnr_input", 100) >= 99.9 else fmt(r.get("psnr_input"), 2), fmt(r.get("psnr_hidden"), 2)]
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
    sections = [runs_section, accuracy_section, reconstruction_section, sweep_section, noise_section, filling_section,
                cluster_section]
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
