"""Figures of saliency maps: rows of images, a column per map (Adebayo et al., NeurIPS 2018, fig. 2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from roar.sanity.map_prep import aggregate_channels, normalize_maps


def display_maps(maps: Tensor) -> np.ndarray:
    """Channel-summed absolute maps, min-max normalised per image: ``(B, H, W)`` in ``[0, 1]``.

    Adebayo et al. (2018) show absolute-value maps this way in their figures.
    """
    return normalize_maps(aggregate_channels(maps.detach().cpu(), absolute=True)).numpy()


def _display_images(images: Tensor) -> np.ndarray:
    images = images.detach().cpu().float().clamp(0, 1)
    if images.shape[1] == 1:
        return images[:, 0].numpy()
    return images[:, :3].permute(0, 2, 3, 1).numpy()


def stack_rows(shown: np.ndarray) -> np.ndarray:
    """``(B, H, W[, 3])`` images in ``[0, 1]`` as one column ``(B*H + gaps, W[, 3])``, white between rows."""
    gap = max(1, shown.shape[1] // 8)
    pad = [(0, gap)] + [(0, 0)] * (shown.ndim - 2)
    return np.concatenate([np.pad(one, pad, constant_values=1.0) for one in shown])[:-gap]


def map_grid_figure(
    images: Tensor,
    maps: Sequence[Tensor],
    column_titles: Sequence[str],
    title: str | None = None,
    cell_inches: float = 1.1,
) -> Figure:
    """Rows: images; columns: the input, then one map per entry of ``maps`` (Adebayo et al. 2018, fig. 2).

    Args:
        images: ``(B, C, H, W)`` inputs in ``[0, 1]``.
        maps: one ``(B, C, H, W)`` batch of maps per column.
        column_titles: a title per map column (the input column is titled "input").
        title: the figure title.
        cell_inches: size of one cell.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` (not registered with pyplot).
    """
    if len(maps) != len(column_titles):
        raise ValueError(f"{len(maps)} map columns but {len(column_titles)} column titles")
    shown_images = _display_images(images)
    shown_maps = [display_maps(m) for m in maps]
    rows, cols = shown_images.shape[0], 1 + len(shown_maps)
    fig = Figure(figsize=(cell_inches * cols, cell_inches * rows + (0.5 if title else 0.2)), layout="constrained")
    # One axes per column, its images stacked with a white gap: a grid of rows x cols axes took
    # seconds to lay out and draw (16 images x 7 columns), at every epoch of a callback with log_images.
    axes = np.asarray(fig.subplots(1, cols, squeeze=False))[0]
    for ax, shown, name in zip(axes, [shown_images, *shown_maps], ["input", *column_titles]):
        ax.imshow(stack_rows(shown), cmap="gray" if shown.ndim == 3 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=7, rotation=30 if len(name) > 8 else 0)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def figure_array(fig: Figure) -> np.ndarray:
    """The figure rendered to an ``(H, W, 3)`` uint8 RGB array (for a logger's image API)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()

