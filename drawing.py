"""
The building blocks of every figure in figures.py: a figure of panels, saving it, heatmap colours, the
hidden-pixel colour, a grid of images with its labels and colour bar, finished axes, and numbers as text
for titles and report.md's tables (fmt).
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


def fmt(value, digits=4):
    """A number for a title or report.md's tables: "–" where there is none; digits None: 12,345."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,}" if digits is None else f"{value:.{digits}f}"


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
HIDDEN_COLOUR = (0.2, 0.4, 0.8)  # hidden pixels of masked inputs
UNIT_SCALE = matplotlib.colors.Normalize(0, 1, clip=True)  # heat 0 .. 1, linear; past either end: its end colour


def heat_images(heat, scale=UNIT_SCALE):
    """Heatmaps (B, H, W) -> (B, 3, H, W) colours of HEAT_CMAP on the colour scale `scale` (a matplotlib
    Normalize). Drawn on their own, not blended over the image, where bright strokes would look hot
    whatever the map says."""
    heat = heat.detach().float().cpu().numpy()
    # flat in, shape back: a log scale takes 1-D arrays only; masked values (<= 0 on a log scale) -> bottom
    levels = scale(heat.ravel()).filled(0).reshape(heat.shape)
    colours = HEAT_CMAP(levels)[..., :3]
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
