"""scib's three silhouette metrics (label ASW, batch ASW, isolated-label ASW) in one pass.

scib 1.1.7 calls sklearn's silhouette on the whole embedding twice (``silhouette`` and
``isolated_labels_asw``) and once per label (``silhouette_batch``): each call recomputes the
distances it needs, which takes minutes at 90,000 cells. Here each distance between two cells is
computed once (for one of the two orders: the matrix is symmetric), in square tiles, and reduced
at once to per-cell sums of distances to every label and to every batch of the cell's own label.
All three metrics follow exactly from those sums, with the same definitions as scib:

* ``asw_label``: sklearn's silhouette of the labels, mean over cells, scaled to (s + 1) / 2.
* ``asw_batch``: within each label, sklearn's silhouette of the batches; the mean of 1 - |s| per
  label, then the mean over labels. Labels in a single batch, or with every cell in a different
  batch, are left out (sklearn cannot score them); NaN if none is left.
* ``isolated_label_asw``: for each isolated label, the mean over its cells of their *label*
  silhouette (the same per-cell values as ``asw_label``, not a label-vs-rest silhouette: that is
  what scib computes, despite its docstring), scaled to (s + 1) / 2; then the mean over isolated
  labels. NaN without isolated labels.

Memory is bounded by a tile of ``chunk_size`` x ``chunk_size`` float64 and O(n x (labels +
batches)) sums per worker thread, plus copies of the embedding: ~190 MB at 90,000 cells x 30
dimensions with 45 labels, 12 batches and 2 threads. There, on 2 CPU cores, this takes ~10 s
where the three scib calls take 3 to 4.5 min, with the same values to ~1e-7 (scib's sklearn rounds
distances of float32 embeddings to float32; this sums in float64).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

DEFAULT_CHUNK_SIZE = 1024  # tiles of 8 MB: they stay in cache between the steps on them
MAX_DEFAULT_THREADS = 8
Tile = tuple[tuple[int, int], tuple[int, int]]  # (first, stop) of its rows, of its columns


@dataclass(frozen=True)
class _Layout:
    """Cells sorted by (label, batch), so that each label and each (label, batch) group of cells
    is a contiguous range: sums over a group are then ``np.add.reduceat`` over slices."""

    order: np.ndarray  # sorted position -> input row
    labels: np.ndarray  # label code per sorted cell
    group_starts: np.ndarray  # first sorted cell of each (label, batch) group, then n
    group_labels: np.ndarray
    group_batches: np.ndarray
    label_starts: np.ndarray  # first sorted cell of each label, then n
    n_batches: int

    @classmethod
    def build(cls, labels: np.ndarray, batches: np.ndarray, n_batches: int) -> _Layout:
        order = np.lexsort((batches, labels))
        labels, batches = labels[order], batches[order]
        n = labels.size
        new_group = np.r_[True, (labels[1:] != labels[:-1]) | (batches[1:] != batches[:-1])]
        group_starts = np.flatnonzero(new_group)
        label_starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        return cls(
            order=order,
            labels=labels,
            group_starts=np.r_[group_starts, n],
            group_labels=labels[group_starts],
            group_batches=batches[group_starts],
            label_starts=np.r_[label_starts, n],
            n_batches=n_batches,
        )

    def groups_in(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The groups overlapping cells [start, stop) and where each begins, relative to start."""
        first = np.searchsorted(self.group_starts, start, side="right") - 1
        last = np.searchsorted(self.group_starts, stop, side="left")
        groups = np.arange(first, last)
        offsets = np.maximum(self.group_starts[first:last], start) - start
        return groups, offsets


def silhouette_metrics(
    embedding: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray | None,
    isolated: Sequence[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    n_threads: int | None = None,
) -> dict[str, float]:
    """scib 1.1.7's ``silhouette``, ``silhouette_batch`` and ``isolated_labels_asw`` (defaults,
    euclidean, scaled to [0, 1]) from a single pass over the pairwise distances.

    ``labels`` and ``batches`` are compared as strings; ``isolated`` names the isolated labels
    (chosen by the caller, as scib does: the labels found in the fewest batches). Without
    ``batches`` there is no ``asw_batch`` key. Where sklearn (hence scib) would raise because
    there are fewer than 2 labels, or as many labels as cells, the label-based scores are NaN.
    An isolated label with no cell is ignored (scib averages its NaN away).

    ``chunk_size`` is the side of the square tiles of distances; ``n_threads`` (default: the
    usable CPUs, at most 8) tiles are computed in parallel, each with single-threaded BLAS.
    """
    points = np.asarray(embedding, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"expected an embedding of cells x dimensions, got shape {points.shape}")
    n = points.shape[0]
    label_names, label_codes = _encode(labels, n)
    batch_codes = np.zeros(n, dtype=np.intp) if batches is None else _encode(batches, n)[1]
    layout = _Layout.build(label_codes, batch_codes, int(batch_codes.max()) + 1)
    label_sums, batch_sums = _distance_sums(points[layout.order], layout, chunk_size, n_threads)

    scores = {"asw_label": np.nan, "isolated_label_asw": np.nan}
    if 2 <= label_names.size <= n - 1:
        starts = layout.label_starts
        label_sil = _silhouettes(label_sums, layout.labels, np.diff(starts))
        scores["asw_label"] = (label_sil.mean() + 1) / 2
        isolated_codes = np.flatnonzero(np.isin(label_names, [str(name) for name in isolated]))
        if isolated_codes.size:
            per_label = [
                label_sil[starts[code] : starts[code + 1]].mean() for code in isolated_codes
            ]
            scores["isolated_label_asw"] = (np.mean(per_label) + 1) / 2
    if batches is not None:
        scores["asw_batch"] = _batch_asw(batch_sums, layout)
    return {key: float(value) for key, value in scores.items()}


def _encode(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (as strings, sorted) and each cell's index among them."""
    names, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    if codes.size != n:
        raise ValueError(f"{codes.size} labels or batches for {n} cells")
    return names, codes.reshape(-1)


def _silhouettes(sums: np.ndarray, own: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """sklearn's ``silhouette_samples`` from each cell's sums of distances to each group.

    a: mean distance to the rest of the own group; b: smallest mean distance to another group;
    s = (b - a) / max(a, b), 0 in a singleton group (and where a = b = 0), as sklearn.
    """
    rows = np.arange(own.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        intra = sums[rows, own] / (sizes[own] - 1)
        means = sums / sizes
        means[rows, own] = np.inf
        inter = means.min(axis=1)
        sil = (inter - intra) / np.maximum(intra, inter)
    return np.nan_to_num(sil)


def _batch_asw(batch_sums: np.ndarray, layout: _Layout) -> float:
    """Mean over labels of the mean 1 - |batch silhouette| of their cells (scib's batch ASW)."""
    per_label = []
    for start, stop in zip(layout.label_starts[:-1], layout.label_starts[1:], strict=True):
        groups, offsets = layout.groups_in(start, stop)
        if groups.size in (1, stop - start):  # scib skips these labels
            continue
        sizes = np.diff(np.r_[offsets, stop - start])
        sums = batch_sums[start:stop][:, layout.group_batches[groups]]
        own = np.repeat(np.arange(groups.size), sizes)
        per_label.append(np.mean(1 - np.abs(_silhouettes(sums, own, sizes))))
    return float(np.mean(per_label)) if per_label else np.nan


def _distance_sums(
    points: np.ndarray, layout: _Layout, chunk_size: int, n_threads: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell sums of euclidean distances to every label, and to every batch among the cells
    of the cell's own label (cells in ``layout`` order).

    The upper triangle of tiles is spread over threads, each with its own sums (added at the
    end) and single-threaded BLAS: numpy's element-wise steps are single-threaded, so two
    tiles at once keep both cores busy where one tile with two BLAS threads would not.
    """
    from threadpoolctl import threadpool_limits

    n = points.shape[0]
    bounds = [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    tiles = [(rows, cols) for i, rows in enumerate(bounds) for cols in bounds[i:]]
    if n_threads is None:  # each thread holds its own sums: cap the default
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        n_threads = min(usable, MAX_DEFAULT_THREADS)
    n_threads = max(1, min(n_threads, len(tiles)))
    # Squared distances |x|^2 - 2 x.y + |y|^2 as one product, as sklearn computes them.
    squares = np.einsum("ij,ij->i", points, points)
    left = np.column_stack([points, squares, np.ones(n)])
    right = np.ascontiguousarray(np.column_stack([-2 * points, np.ones(n), squares]).T)

    def work(share: Iterable[Tile]) -> tuple[np.ndarray, np.ndarray]:
        label_sums = np.zeros((n, layout.label_starts.size - 1))
        batch_sums = np.zeros((n, layout.n_batches))
        # One buffer for all tiles: a fresh 8 MB array per tile costs page faults, which
        # threads of one process take in turn.
        buffer = np.empty(min(chunk_size, n) ** 2)
        for (r0, r1), (c0, c1) in share:
            tile = buffer[: (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)
            np.matmul(left[r0:r1], right[:, c0:c1], out=tile)
            np.maximum(tile, 0, out=tile)
            if r0 == c0:
                np.fill_diagonal(tile, 0)
            np.sqrt(tile, out=tile)
            groups, offsets = layout.groups_in(c0, c1)
            to_groups = np.add.reduceat(tile, offsets, axis=1)
            _add_group_sums(label_sums, batch_sums, layout, r0, r1, to_groups, groups)
            if r0 != c0:  # the same distances, seen from the column cells
                groups, offsets = layout.groups_in(r0, r1)
                from_groups = _column_sums(tile, offsets).T
                _add_group_sums(label_sums, batch_sums, layout, c0, c1, from_groups, groups)
        return label_sums, batch_sums

    shares = [tiles[k::n_threads] for k in range(n_threads)]
    with threadpool_limits(limits=1, user_api="blas"):
        if n_threads == 1:
            results = [work(shares[0])]
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                results = list(pool.map(work, shares))
    label_sums, batch_sums = results[0]
    for more_labels, more_batches in results[1:]:
        label_sums += more_labels
        batch_sums += more_batches
    return label_sums, batch_sums


def _column_sums(tile: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Column sums over each group of consecutive rows (starting at ``offsets``): a reduction
    per group is ~10x faster than ``np.add.reduceat`` along axis 0."""
    sums = np.empty((offsets.size, tile.shape[1]))
    stops = [*offsets[1:], tile.shape[0]]
    for group, (start, stop) in enumerate(zip(offsets, stops, strict=True)):
        np.add.reduce(tile[start:stop], axis=0, out=sums[group])
    return sums


def _add_group_sums(
    label_sums: np.ndarray,
    batch_sums: np.ndarray,
    layout: _Layout,
    start: int,
    stop: int,
    sums: np.ndarray,
    groups: np.ndarray,
) -> None:
    """Add sums of distances from cells [start, stop) to the (label, batch) ``groups`` (the
    columns of ``sums``, consecutive) to their label sums and, for groups of their own label,
    to their batch sums."""
    group_labels = layout.group_labels[groups]
    firsts = np.flatnonzero(np.r_[True, group_labels[1:] != group_labels[:-1]])
    label_sums[start:stop, group_labels[firsts]] += np.add.reduceat(sums, firsts, axis=1)
    # Cells of label l among [start, stop) meet the groups of label l, if any, here.
    for label in np.intersect1d(layout.labels[start:stop], group_labels, assume_unique=False):
        lo = max(start, layout.label_starts[label])
        hi = min(stop, layout.label_starts[label + 1])
        own = group_labels == label
        columns = layout.group_batches[groups[own]]
        batch_sums[lo:hi, columns] += sums[lo - start : hi - start][:, own]
