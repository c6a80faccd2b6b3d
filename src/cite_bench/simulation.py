"""A simulated CITE-seq dataset in the layout of the NeurIPS 2021 BMMC GEO file.

The demo has to be a fair test of integration, so it is built from the things that make the
real data hard: related cell types that share a lineage programme, rare types, nested site and
donor batch effects on both modalities, overdispersed RNA counts with varying library size, and
protein counts on top of an ambient background.
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


def simulate_cite_seq(
    n_cells: int = 3000,
    n_genes: int = 3000,
    n_proteins: int = 60,
    seed: int = 0,
    sites: dict[str, tuple[str, ...]] | None = None,
    effects: EffectSizes | None = None,
) -> ad.AnnData:
    """Simulate CITE-seq counts as one AnnData with GEX and ADT told apart by
    ``var["feature_types"]``, raw integer counts in ``layers["counts"]`` and ``obs`` holding
    ``cell_type``, ``batch`` (``s1d2``), ``Site`` and ``DonorNumber``, like the GEO file."""
    if n_cells < len(CELL_TYPES):
        raise ValueError(f"n_cells must be at least {len(CELL_TYPES)}, got {n_cells}")
    if n_genes < 100 or n_proteins < 10:
        raise ValueError("the demo needs at least 100 genes and 10 proteins")
    sites = sites or DEFAULT_SITES
    effects = effects or EffectSizes()
    rng = np.random.default_rng(seed)

    obs = _simulate_cells(n_cells, sites, rng)
    type_index = obs["cell_type"].cat.codes.to_numpy()
    lineages = sorted({lineage for _, lineage, _ in CELL_TYPES})
    type_lineage = np.array([lineages.index(lineage) for _, lineage, _ in CELL_TYPES])

    rna = _simulate_rna(obs, type_index, type_lineage, len(lineages), n_genes, effects, rng)
    adt = _simulate_adt(obs, type_index, type_lineage, len(lineages), n_proteins, effects, rng)

    counts = sparse.hstack([rna, adt], format="csr").astype(np.float32)
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
    bases = np.array(list("ACGT"))[rng.integers(0, 4, size=(n_cells, 16))]
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


def _batch_effects(
    obs: pd.DataFrame, n_features: int, site_sd: float, donor_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Per-cell log-scale shift: one draw per site plus a smaller, nested draw per donor."""
    site_codes = obs["Site"].cat.codes.to_numpy()
    batch_codes = obs["batch"].cat.codes.to_numpy()
    site_shift = rng.normal(0.0, site_sd, size=(obs["Site"].cat.categories.size, n_features))
    donor_shift = rng.normal(0.0, donor_sd, size=(obs["batch"].cat.categories.size, n_features))
    return site_shift[site_codes] + donor_shift[batch_codes]


def _simulate_rna(
    obs: pd.DataFrame,
    type_index: np.ndarray,
    type_lineage: np.ndarray,
    n_lineages: int,
    n_genes: int,
    effects: EffectSizes,
    rng: np.random.Generator,
) -> sparse.csr_matrix:
    base = rng.normal(-1.5, 1.2, size=n_genes)
    # Sparse programmes: a lineage moves ~10 % of genes, a cell type a further ~5 %.
    lineage_effect = rng.normal(0, effects.lineage, (n_lineages, n_genes)) * (
        rng.random((n_lineages, n_genes)) < 0.10
    )
    type_effect = rng.normal(0, effects.cell_type, (len(CELL_TYPES), n_genes)) * (
        rng.random((len(CELL_TYPES), n_genes)) < 0.05
    )
    log_rate = (
        base
        + lineage_effect[type_lineage[type_index]]
        + type_effect[type_index]
        + _batch_effects(obs, n_genes, effects.site, effects.donor, rng)
    )
    # Library size varies by cell and by site (different chemistry and sequencing depth).
    site_depth = rng.normal(0, 0.3, obs["Site"].cat.categories.size)[obs["Site"].cat.codes]
    log_library = rng.normal(0, effects.library_size, len(obs)) + site_depth
    mean = np.exp(log_rate + log_library[:, None])
    # Negative binomial via a gamma-Poisson mixture with gene-wise dispersion.
    dispersion = rng.gamma(2.0, 1.0, size=n_genes)
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))
    return sparse.csr_matrix(counts.astype(np.float32))


def _simulate_adt(
    obs: pd.DataFrame,
    type_index: np.ndarray,
    type_lineage: np.ndarray,
    n_lineages: int,
    n_proteins: int,
    effects: EffectSizes,
    rng: np.random.Generator,
) -> sparse.csr_matrix:
    # Lineage markers are bright and shared by related types; a type's own markers are dimmer,
    # so related types differ in protein only a little, as CD4+ T subsets do in real data.
    lineage_marker = rng.random((n_lineages, n_proteins)) < 0.15
    type_marker = rng.random((len(CELL_TYPES), n_proteins)) < 0.08
    lineage_on = lineage_marker[type_lineage[type_index]]
    type_on = type_marker[type_index]
    on = lineage_on | type_on
    level = rng.normal(0, effects.protein_cell_type / 4, (len(CELL_TYPES), n_proteins))
    foreground = np.where(lineage_on, 3.5, 0.0) + np.where(type_on, 1.2, 0.0) + level[type_index]
    shift = _batch_effects(obs, n_proteins, effects.protein_site, effects.protein_donor, rng)
    foreground_mean = np.where(on, np.exp(foreground + shift), 0.0)
    # Ambient background (free antibody) differs by batch and is present in every cell.
    background_level = rng.normal(2.0, 0.4, obs["batch"].cat.categories.size)
    background_mean = np.exp(
        background_level[obs["batch"].cat.codes.to_numpy()][:, None]
        + rng.normal(0, 0.5, n_proteins)
    )
    mean = (foreground_mean + background_mean) * np.exp(rng.normal(0, 0.3, len(obs)))[:, None]
    counts = rng.poisson(rng.gamma(5.0, mean / 5.0))
    return sparse.csr_matrix(counts.astype(np.float32))
