"""A simulated CITE-seq dataset in the layout of the NeurIPS 2021 BMMC GEO file.

The demo has to be a fair test of integration, so it is built from the things that make the
real data hard: related cell types that share a lineage programme, rare types, nested site and
donor batch effects on both modalities, overdispersed RNA counts with varying library size, and
protein counts on top of an ambient background.

Counts are drawn a block of cells at a time straight into a sparse matrix, so that memory grows
with the number of detected counts, not with cells x genes: the GEO file's size (90,000 cells x
14,000 genes) fits in a few GB.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

# (cell type, lineage, relative abundance). Related types share a lineage; three are rare (<2 %).
CELL_TYPES: tuple[tuple[str, str, float], ...] = (
    ("CD14+ Mono", "myeloid", 0.16),
    ("CD16+ Mono", "myeloid", 0.06),
    ("cDC2", "myeloid", 0.03),
    ("pDC", "myeloid", 0.015),
    ("CD4+ T naive", "lymphoid_t", 0.14),
    ("CD4+ T activated", "lymphoid_t", 0.10),
    ("CD8+ T", "lymphoid_t", 0.10),
    ("NK", "lymphoid_t", 0.07),
    ("ILC", "lymphoid_t", 0.01),
    ("Naive CD20+ B", "lymphoid_b", 0.08),
    ("B1 B", "lymphoid_b", 0.05),
    ("Plasma cell", "lymphoid_b", 0.012),
    ("Erythroblast", "progenitor", 0.07),
    ("Proerythroblast", "progenitor", 0.04),
    ("HSC", "progenitor", 0.033),
)

# Sites with their donors: donors are nested within sites, as in the GEO file (s1d1, s1d2, ...).
DEFAULT_SITES: dict[str, tuple[str, ...]] = {
    "s1": ("d1", "d2"),
    "s2": ("d1", "d4"),
    "s3": ("d6", "d7"),
}

# Cells drawn at a time: bounds the dense working arrays (~30 MB each at 14,000 genes). Fixed,
# because the random stream, and so the data of a seed, depends on it.
CHUNK_CELLS = 256
# Blocks joined into one part as they come (see simulate_cite_seq).
BLOCKS_PER_PART = 32

# Counts of a mean up to this are drawn by inverting the CDF, larger ones as gamma-Poisson.
INVERSION_MAX_MEAN = 1.0

# Up to this many genes each gene keeps the demo's expression level. Larger panels add mostly
# weakly expressed genes, so sequencing depth grows only with the square root of the panel:
# ~2,000 detected genes and ~4,000 UMIs per cell at the GEO file's 13,953 genes, as in 10x data.
REFERENCE_GENES = 3000


@dataclass(frozen=True)
class EffectSizes:
    """Standard deviations (log scale) of the simulated effects; batch effects are deliberately
    of the same order as the differences between related cell types."""

    lineage: float = 1.2
    cell_type: float = 0.7
    site: float = 0.45
    donor: float = 0.2
    library_size: float = 0.45
    protein_cell_type: float = 1.6
    protein_site: float = 0.5
    protein_donor: float = 0.2


@dataclass(frozen=True)
class _Cells:
    """Per-cell codes that pick rows of the per-group effect tables."""

    cell_type: np.ndarray
    site: np.ndarray
    batch: np.ndarray
    n_lineages: int
    n_sites: int
    n_batches: int


def simulate_cite_seq(
    n_cells: int = 3000,
    n_genes: int = 3000,
    n_proteins: int = 60,
    seed: int = 0,
    sites: dict[str, tuple[str, ...]] | None = None,
    effects: EffectSizes | None = None,
) -> ad.AnnData:
    """Simulate CITE-seq counts as one AnnData with GEX and ADT told apart by
    ``var["feature_types"]``, raw integer counts in ``layers["counts"]`` (CSR, float32; ``X``
    holds a copy) and ``obs`` holding ``cell_type``, ``batch`` (``s1d2``), ``Site`` and
    ``DonorNumber``, like the GEO file. The same seed gives the same data."""
    if n_cells < len(CELL_TYPES):
        raise ValueError(f"n_cells must be at least {len(CELL_TYPES)}, got {n_cells}")
    if n_genes < 100 or n_proteins < 10:
        raise ValueError("the demo needs at least 100 genes and 10 proteins")
    sites = sites or DEFAULT_SITES
    effects = effects or EffectSizes()
    rng = np.random.default_rng(seed)

    obs = _simulate_cells(n_cells, sites, rng)
    lineages = sorted({lineage for _, lineage, _ in CELL_TYPES})
    type_lineage = np.array([lineages.index(lineage) for _, lineage, _ in CELL_TYPES])
    cells = _Cells(
        cell_type=obs["cell_type"].cat.codes.to_numpy(),
        site=obs["Site"].cat.codes.to_numpy(),
        batch=obs["batch"].cat.codes.to_numpy(),
        n_lineages=len(lineages),
        n_sites=obs["Site"].cat.categories.size,
        n_batches=obs["batch"].cat.categories.size,
    )
    rna = _RnaModel(cells, type_lineage, n_genes, effects, rng)
    adt = _AdtModel(cells, type_lineage, n_proteins, effects, rng)
    parts, blocks = [], []
    for start in range(0, n_cells, CHUNK_CELLS):
        rows = slice(start, min(start + CHUNK_CELLS, n_cells))
        blocks.append(sparse.hstack([rna.counts(rows, rng), adt.counts(rows, rng)], format="csr"))
        if len(blocks) == BLOCKS_PER_PART or rows.stop == n_cells:
            # Many small blocks would stay in the heap after they are joined: join them in parts
            # large enough to be given back to the system once the whole matrix is built.
            parts.append(sparse.vstack(blocks, format="csr"))
            blocks = []
    counts = sparse.vstack(parts, format="csr")
    del parts

    var = pd.DataFrame(
        {"feature_types": pd.Categorical(["GEX"] * n_genes + ["ADT"] * n_proteins)},
        index=[f"Gene{i:05d}" for i in range(n_genes)] + [f"CD{i + 1}" for i in range(n_proteins)],
    )
    adata = ad.AnnData(X=counts.copy(), obs=obs, var=var, layers={"counts": counts})
    adata.uns["dataset_id"] = "simulated_cite_seq"
    adata.uns["simulation"] = {"n_cells": n_cells, "seed": seed}
    return adata


def _simulate_cells(
    n_cells: int, sites: dict[str, tuple[str, ...]], rng: np.random.Generator
) -> pd.DataFrame:
    names = [name for name, _, _ in CELL_TYPES]
    abundance = np.array([weight for _, _, weight in CELL_TYPES])
    # Every type appears at least twice so rare types exist even in small demos.
    guaranteed = np.repeat(np.arange(len(names)), 2)
    drawn = rng.choice(len(names), size=n_cells - guaranteed.size, p=abundance / abundance.sum())
    cell_type = rng.permutation(np.concatenate([guaranteed, drawn]))

    batches = [(site, donor) for site, donors in sites.items() for donor in donors]
    # Batches differ in size and somewhat in composition, as donors do.
    batch_weight = rng.dirichlet(np.full(len(batches), 8.0), size=len(names))
    # Rare types occur in one or two donors only, so that some labels are isolated, as in BMMC.
    for rare in np.flatnonzero(abundance < 0.02):
        absent = rng.permutation(len(batches))[rng.integers(1, 3) :]
        batch_weight[rare, absent] = 0.0
    batch_weight /= batch_weight.sum(axis=1, keepdims=True)
    # Inverse-CDF draw of each cell's batch from its type's batch weights.
    cumulative = batch_weight.cumsum(axis=1)[cell_type]
    batch = (rng.random(n_cells)[:, None] > cumulative).sum(axis=1).clip(max=len(batches) - 1)
    site = np.array([s for s, _ in batches])[batch]
    donor = np.array([d for _, d in batches])[batch]
    # Distinct 16-base barcodes: drawn at random they would collide at GEO sizes (90,000 cells).
    codes = rng.choice(4**16, size=n_cells, replace=False)
    bases = np.array(list("ACGT"))[(codes[:, None] >> np.arange(30, -1, -2)) & 3]
    barcodes = [f"{''.join(code)}-1-{s}{d}" for code, s, d in zip(bases, site, donor, strict=True)]
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_type, categories=names),
            "batch": pd.Categorical([f"{s}{d}" for s, d in zip(site, donor, strict=True)]),
            "Site": pd.Categorical(site),
            "DonorNumber": pd.Categorical([f"donor{d[1:]}" for d in donor]),
        },
        index=pd.Index(barcodes, name=None),
    )


def _batch_shifts(
    cells: _Cells, n_features: int, site_sd: float, donor_sd: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Log-scale shifts per site and, smaller and nested, per donor (rows: site, batch)."""
    site_shift = rng.normal(0.0, site_sd, size=(cells.n_sites, n_features))
    donor_shift = rng.normal(0.0, donor_sd, size=(cells.n_batches, n_features))
    return site_shift, donor_shift


def _to_csr(counts: np.ndarray) -> sparse.csr_matrix:
    """A dense block of counts as float32 CSR, without a dense float copy."""
    flat = np.flatnonzero(counts)
    rows, columns = np.divmod(flat, counts.shape[1])
    indptr = np.zeros(counts.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=counts.shape[0]), out=indptr[1:])
    data = counts.reshape(-1)[flat].astype(np.float32)
    return sparse.csr_matrix((data, columns.astype(np.int32), indptr), shape=counts.shape)


def _negative_binomial(
    mean: np.ndarray, dispersion: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Negative binomial counts (gamma-Poisson: variance ``mean + mean**2 / dispersion``) for a
    block of cells x genes, with one dispersion (NB size ``r``) per gene.

    Exact, and about twice as fast as drawing a gamma and a Poisson variate for every entry:
    most means are small and most counts zero, so those counts are drawn by inverting the CDF,
    where one uniform variate settles a zero; only means above ``INVERSION_MAX_MEAN`` are drawn
    as gamma-Poisson.
    """
    n_genes = mean.shape[1]
    flat_mean = mean.reshape(-1)
    counts = np.zeros(mean.shape, dtype=np.int32)
    flat_counts = counts.reshape(-1)
    large = np.flatnonzero(flat_mean > INVERSION_MAX_MEAN)
    size = dispersion[large % n_genes]
    flat_counts[large] = rng.poisson(rng.standard_gamma(size) * (flat_mean[large] / size))

    # P(0) = (r / (m + r)) ** r for dispersion r and mean m, computed in place.
    genes = np.broadcast_to(dispersion, mean.shape)
    cdf = mean + genes
    np.divide(genes, cdf, out=cdf)
    np.log(cdf, out=cdf)
    cdf *= genes
    np.exp(cdf, out=cdf)
    uniform = rng.random(mean.shape)
    positive = uniform >= cdf
    positive.reshape(-1)[large] = False
    index = np.flatnonzero(positive)
    del positive
    uniform, cdf = uniform.reshape(-1)[index], cdf.reshape(-1)[index]
    size = dispersion[index % n_genes]
    odds = flat_mean[index] / (flat_mean[index] + size)
    probability = cdf.copy()
    count = 0
    # P(k) = P(k - 1) * odds * (r + k - 1) / k; each pass settles the counts whose uniform
    # variate falls below the CDF at k, or whose P(k) underflowed (rounding can leave the CDF
    # just short of a uniform variate next to 1).
    while index.size:
        count += 1
        probability *= odds * ((size + (count - 1)) / count)
        cdf += probability
        settled = (uniform < cdf) | (probability == 0.0)
        flat_counts[index[settled]] = count
        left = ~settled
        index, uniform, cdf = index[left], uniform[left], cdf[left]
        probability, odds, size = probability[left], odds[left], size[left]
    return counts


class _RnaModel:
    """Overdispersed RNA counts: per-gene means moved by lineage and cell-type programmes,
    site and donor shifts, and a per-cell library size."""

    def __init__(
        self,
        cells: _Cells,
        type_lineage: np.ndarray,
        n_genes: int,
        effects: EffectSizes,
        rng: np.random.Generator,
    ) -> None:
        self.cells = cells
        depth_shift = 0.5 * np.log(max(n_genes, REFERENCE_GENES) / REFERENCE_GENES)
        self.base = rng.normal(-1.5 - depth_shift, 1.2, size=n_genes)
        # Sparse programmes: a lineage moves ~10 % of genes, a cell type a further ~5 %.
        lineage_effect = rng.normal(0, effects.lineage, (cells.n_lineages, n_genes)) * (
            rng.random((cells.n_lineages, n_genes)) < 0.10
        )
        type_effect = rng.normal(0, effects.cell_type, (len(CELL_TYPES), n_genes)) * (
            rng.random((len(CELL_TYPES), n_genes)) < 0.05
        )
        # One table row per cell type: its lineage's programme plus its own.
        self.type_effect = lineage_effect[type_lineage] + type_effect
        self.site_shift, self.donor_shift = _batch_shifts(
            cells, n_genes, effects.site, effects.donor, rng
        )
        # Library size varies by cell and by site (different chemistry and sequencing depth).
        site_depth = rng.normal(0, 0.3, cells.n_sites)[cells.site]
        self.log_library = rng.normal(0, effects.library_size, cells.cell_type.size) + site_depth
        # Negative binomial (a gamma-Poisson mixture) with gene-wise dispersion.
        self.dispersion = rng.gamma(2.0, 1.0, size=n_genes)

    def counts(self, rows: slice, rng: np.random.Generator) -> sparse.csr_matrix:
        cells = self.cells
        rate = self.type_effect[cells.cell_type[rows]]
        rate += self.site_shift[cells.site[rows]]
        rate += self.donor_shift[cells.batch[rows]]
        rate += self.base
        rate += self.log_library[rows, None]
        np.exp(rate, out=rate)
        return _to_csr(_negative_binomial(rate, self.dispersion, rng))


class _AdtModel:
    """Protein counts: bright lineage markers, dimmer cell-type markers, site and donor shifts,
    and an ambient background in every cell."""

    def __init__(
        self,
        cells: _Cells,
        type_lineage: np.ndarray,
        n_proteins: int,
        effects: EffectSizes,
        rng: np.random.Generator,
    ) -> None:
        self.cells = cells
        # Lineage markers are bright and shared by related types; a type's own markers are
        # dimmer, so related types differ in protein only a little, as CD4+ T subsets do.
        lineage_marker = rng.random((cells.n_lineages, n_proteins)) < 0.15
        type_marker = rng.random((len(CELL_TYPES), n_proteins)) < 0.08
        level = rng.normal(0, effects.protein_cell_type / 4, (len(CELL_TYPES), n_proteins))
        lineage_on = lineage_marker[type_lineage]
        self.on = lineage_on | type_marker
        self.foreground = np.where(lineage_on, 3.5, 0.0) + np.where(type_marker, 1.2, 0.0) + level
        self.site_shift, self.donor_shift = _batch_shifts(
            cells, n_proteins, effects.protein_site, effects.protein_donor, rng
        )
        # Ambient background (free antibody) differs by batch and is present in every cell.
        background_level = rng.normal(2.0, 0.4, cells.n_batches)
        self.background = np.exp(background_level[:, None] + rng.normal(0, 0.5, n_proteins))
        self.log_scale = rng.normal(0, 0.3, cells.cell_type.size)

    def counts(self, rows: slice, rng: np.random.Generator) -> sparse.csr_matrix:
        cells = self.cells
        cell_type, batch = cells.cell_type[rows], cells.batch[rows]
        shift = self.site_shift[cells.site[rows]] + self.donor_shift[batch]
        foreground = np.where(self.on[cell_type], np.exp(self.foreground[cell_type] + shift), 0.0)
        mean = (foreground + self.background[batch]) * np.exp(self.log_scale[rows])[:, None]
        return _to_csr(rng.poisson(rng.gamma(5.0, mean / 5.0)))
