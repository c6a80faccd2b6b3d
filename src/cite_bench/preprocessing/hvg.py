"""scanpy's batch-aware ``highly_variable_genes(flavor="seurat")``, value for value, computed a
site at a time: the normalised matrix of all genes is never built (scanpy's holds it with up to
three copies of a site's cells, 6 GB at ~90,000 cells)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from fast_array_utils import stats
from scipy import sparse

from cite_bench.preprocessing.blocks import row_blocks
from cite_bench.preprocessing.counts import InputDataError


def log_normalised(counts: sparse.csr_matrix, factors: np.ndarray) -> sparse.csr_matrix:
    """``log1p`` of ``counts`` divided by each cell's ``normalize_total`` factor (its total
    over all genes / target_sum), as scanpy divides them: the values these genes had before the
    cut, in a new matrix."""
    factors = factors + (factors == 0)  # as scanpy: a cell without counts stays zero
    data = np.empty_like(counts.data)
    indptr = counts.indptr
    for start, stop in row_blocks(np.diff(indptr)):
        stored = slice(indptr[start], indptr[stop])
        scale = np.repeat(factors[start:stop], np.diff(indptr[start : stop + 1]))
        np.divide(counts.data[stored], scale, out=data[stored])
    values = sparse.csr_matrix((data, counts.indices.copy(), indptr.copy()), shape=counts.shape)
    return sc.pp.log1p(values)


def _site_dispersions(
    counts: sparse.csr_matrix, rows: np.ndarray, target_sum: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and variance (``correction=1``) of each gene's ``expm1`` of the log-normalised
    values over the ``rows`` cells of one site, computed as scanpy's ``flavor="seurat"`` does
    (the same function on the same matrix of the site's cells, so to the last bit), which genes
    are detected there, and the cells' normalisation factors. Only this site's values are held,
    never all cells'; scanpy normalises them a block of cells at a time."""
    row_nnz = np.diff(counts.indptr)[rows]
    indptr = np.concatenate([[0], np.cumsum(row_nnz)])
    data = np.empty(indptr[-1], dtype=np.float32)
    indices = np.empty(indptr[-1], dtype=counts.indices.dtype)
    detected = np.zeros(counts.shape[1], dtype=np.int64)
    factors = np.empty(rows.size, dtype=np.float32)
    for start, stop in row_blocks(row_nnz):
        block = ad.AnnData(counts[rows[start:stop]])
        sc.pp.normalize_total(block, target_sum=target_sum, key_added="factor")
        sc.pp.log1p(block)
        factors[start:stop] = block.obs["factor"].to_numpy()
        stored = slice(indptr[start], indptr[stop])
        log_values = block.X
        detected += np.bincount(log_values.indices[log_values.data > 0], minlength=detected.size)
        np.expm1(log_values.data, out=data[stored])
        indices[stored] = log_values.indices
    values = sparse.csr_matrix((data, indices, indptr), shape=(rows.size, counts.shape[1]))
    mean, variance = stats.mean_var(values, axis=0, correction=1)
    return mean, variance, detected > 0, factors


def highly_variable_genes(
    counts: sparse.csr_matrix,
    sites: pd.Series,
    target_sum: float,
    n_top_genes: int,
    var_names: pd.Index,
) -> tuple[pd.DataFrame, np.ndarray]:
    """scanpy's ``highly_variable_genes(flavor="seurat", n_top_genes=..., batch_key=...)`` on
    the log-normalised counts, from each site's statistics: the columns and values it adds to
    ``var``, and each cell's normalisation factor. scanpy 1.12's per-batch selection and its
    merging of the batches, step for step; ``tests/pipelines/data_processing/test_nodes.py``
    compares the two."""
    sites = sites if isinstance(sites.dtype, pd.CategoricalDtype) else sites.astype("category")
    codes = sites.cat.codes.to_numpy()
    factors = np.full(codes.size, np.nan, dtype=np.float32)
    per_site = []
    for code in range(sites.cat.categories.size):
        rows = np.flatnonzero(codes == code)
        mean, variance, detected, factors[rows] = _site_dispersions(counts, rows, target_sum)
        per_site.append(
            _site_hvg(mean[detected], variance[detected], detected, n_top_genes, var_names)
        )
    if np.isnan(factors).any():
        raise InputDataError(f"{int(np.isnan(factors).sum())} cells have no site.")
    table = pd.concat(per_site, axis=0)
    table["highly_variable"] = table["highly_variable"].astype(int)
    table = table.groupby(table.index, observed=True).agg(
        {
            "means": "mean",
            "dispersions": "mean",
            "dispersions_norm": "mean",
            "highly_variable": "sum",
        }
    )
    table["highly_variable_nbatches"] = table["highly_variable"]
    table["highly_variable_intersection"] = table["highly_variable_nbatches"] == len(per_site)
    # Genes chosen by most sites first, ties broken by the mean normalised dispersion.
    table = table.sort_values(
        ["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last"
    )
    table["highly_variable"] = np.arange(table.shape[0]) < n_top_genes
    table = table.loc[var_names]
    hvg = pd.DataFrame(
        {
            "highly_variable": table["highly_variable"],
            "means": table["means"],
            "dispersions": table["dispersions"],
            "dispersions_norm": table["dispersions_norm"].astype(np.float32),
            "highly_variable_nbatches": table["highly_variable_nbatches"],
            "highly_variable_intersection": table["highly_variable_intersection"],
        }
    )
    return hvg, factors


# Bins of mean expression within which scanpy's 'seurat' flavour normalises dispersions.
_HVG_BINS = 20


def _site_hvg(
    mean: np.ndarray,
    variance: np.ndarray,
    detected: np.ndarray,
    n_top_genes: int,
    var_names: pd.Index,
) -> pd.DataFrame:
    """One site's selection from the detected genes' statistics, as scanpy's 'seurat' flavour
    makes it: log dispersions normalised within bins of mean expression, the top genes by
    normalised dispersion; genes not detected in the site get zeros."""
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = variance / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    table = pd.DataFrame({"means": mean, "dispersions": dispersion})
    bins = pd.cut(table["means"], bins=_HVG_BINS)
    table["mean_bin"] = bins.cat.set_categories(bins.cat.categories.astype("string"), rename=True)
    grouped = table.groupby("mean_bin", observed=True)["dispersions"]
    bin_stats = grouped.agg(avg="mean", dev="std")
    # A gene alone in its bin has no spread: its normalised dispersion is set to 1.
    alone = bin_stats["dev"].isnull()
    bin_stats.loc[alone, "dev"] = bin_stats.loc[alone, "avg"]
    bin_stats.loc[alone, "avg"] = 0
    bin_stats = bin_stats.loc[table["mean_bin"]].set_index(table.index)
    table["dispersions_norm"] = (table["dispersions"] - bin_stats["avg"]) / bin_stats["dev"]
    norm = table["dispersions_norm"].to_numpy()
    ranked = norm[~np.isnan(norm)]
    n_top = min(n_top_genes, detected.sum(), ranked.size)
    ranked[::-1].sort()
    table["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= ranked[n_top - 1]
    table.index = var_names[detected]
    if not detected.all():
        missing = pd.DataFrame(np.zeros(((~detected).sum(), table.shape[1])), columns=table.columns)
        missing["highly_variable"] = missing["highly_variable"].astype(bool)
        missing.index = var_names[~detected]
        table = pd.concat([table, missing]).loc[var_names]
    return table
