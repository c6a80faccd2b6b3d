"""Graph connectivity (scib's own function) on a kNN graph."""

from __future__ import annotations

import anndata as ad


def graph_connectivity(adata: ad.AnnData, label_key: str) -> float:
    """How connected each cell type's subgraph of ``obsp["connectivities"]`` is, as the share
    of its cells in its largest connected component; the mean over cell types."""
    import scib

    return float(scib.me.graph_connectivity(adata, label_key=label_key))
