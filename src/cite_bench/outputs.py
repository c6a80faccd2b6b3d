"""What a method hands to evaluation: an embedding or a cell graph, checked in one place.

An embedding is a table of cells x dimensions; a cell graph is a table in the layout of
``cite_bench.knn_graph`` (``neighbour_*`` and ``distance_*`` columns). Scoring, the
requirement checks (metrics that need coordinates), the external embeddings' checks and the
UMAPs all ask this module which of the two a frame is and what it must satisfy, so that the
rules and their error messages are written once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from cite_bench.knn_graph import is_graph_frame, neighbours_of

logger = logging.getLogger(__name__)

OutputKind = Literal["embedding", "graph"]
EMBEDDING: OutputKind = "embedding"
GRAPH: OutputKind = "graph"
KINDS: tuple[OutputKind, ...] = (EMBEDDING, GRAPH)
EMBEDDING_KEY = "X_emb"  # where the coordinates sit in the AnnData scoring reads


class OutputError(ValueError):
    """A method's output cannot be scored; the message names it and says what is wrong."""


@dataclass(frozen=True)
class MethodOutput:
    """One seed's output of a method: ``frame`` indexed by barcode, of ``kind`` embedding
    (coordinates) or graph (each cell's nearest neighbours, ``cite_bench.knn_graph``)."""

    frame: pd.DataFrame
    kind: OutputKind = EMBEDDING

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown method output '{self.kind}' (one of {', '.join(KINDS)}).")

    @classmethod
    def of(cls, frame: pd.DataFrame) -> MethodOutput:
        """The output a stored frame is, told by its columns."""
        return cls(frame, GRAPH if is_graph_frame(frame) else EMBEDDING)

    @property
    def is_graph(self) -> bool:
        return self.kind == GRAPH

    def require_cells(self, cells: pd.DataFrame) -> None:
        """Refuse an output that does not describe exactly the annotated cells."""
        noun = "Graph" if self.is_graph else "Embedding"
        frame = self.frame
        missing = frame.index.difference(cells.index)
        if missing.size or frame.shape[0] != cells.shape[0]:
            raise ValueError(
                f"{noun} ({frame.shape[0]} cells) and cell metadata ({cells.shape[0]} cells) "
                f"do not describe the same cells ({missing.size} {noun.lower()} barcodes "
                "unknown)."
            )

    def coordinates(self) -> np.ndarray:
        """The embedding as float32, finite, without its constant dimensions."""
        values = self.frame.to_numpy(dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError("The embedding contains NaN or infinite values.")
        constant = values.std(axis=0) == 0
        if constant.all():
            raise ValueError("Every dimension of the embedding is constant.")
        if constant.any():
            # e.g. MOFA factors switched off by its sparsity priors: they carry no information
            # and break regression-based scores (PCR).
            logger.info("Dropping %d constant embedding dimensions.", constant.sum())
            values = values[:, ~constant]
        return values

    def neighbours(self) -> Any:
        """A graph output as neighbour search results (scib-metrics' ``NeighborsResults``)."""
        from scib_metrics.nearest_neighbors import NeighborsResults

        indices, distances = neighbours_of(self.frame)
        return NeighborsResults(indices=indices, distances=distances)

    def to_anndata(self, cells: pd.DataFrame) -> tuple[ad.AnnData, Any]:
        """The cells (in the output's order) with the embedding in ``obsm[EMBEDDING_KEY]``, and
        the graph as neighbour search results (``None`` for an embedding)."""
        self.require_cells(cells)
        adata = ad.AnnData(obs=cells.loc[self.frame.index].copy())
        if self.is_graph:
            return adata, self.neighbours()
        adata.obsm[EMBEDDING_KEY] = self.coordinates()
        return adata, None

    def knn_anndata(self, n_neighbors: int, seed: int) -> ad.AnnData:
        """The cells with a kNN graph (``sc.pp.neighbors``): the method's own graph, or
        scanpy's of the embedding (what a UMAP is drawn from)."""
        import scanpy as sc

        from cite_bench.neighbours import PrecomputedNeighbors

        adata = ad.AnnData(obs=pd.DataFrame(index=self.frame.index))
        if self.is_graph:
            # scanpy needs a representation; the precomputed graph ignores it
            adata.obsm["_cells"] = np.zeros((len(self.frame), 1), dtype=np.float32)
            transformer = PrecomputedNeighbors(self.neighbours(), n_neighbors)
            sc.pp.neighbors(adata, use_rep="_cells", transformer=transformer)
        else:
            adata.obsm[EMBEDDING_KEY] = self.frame.to_numpy(dtype=np.float32)
            sc.pp.neighbors(
                adata, use_rep=EMBEDDING_KEY, n_neighbors=n_neighbors, random_state=seed
            )
        return adata

    def checked_against(self, cells: pd.DataFrame, where: str) -> pd.DataFrame:
        """A user's embedding checked before any scoring: numbers only, unique barcodes, every
        cell present (extra cells are named and dropped), finite, at least two non-constant
        dimensions. Returns it in the cells' order; ``where`` names it in the errors."""
        frame = self.frame
        if frame.shape[1] == 0:
            raise OutputError(f"{where}: the embedding has no dimension.")
        text = [column for column, dtype in frame.dtypes.items() if dtype.kind not in "biuf"]
        if text:
            raise OutputError(f"{where}: non-numeric columns {text[:5]}.")
        duplicated = frame.index[frame.index.duplicated()]
        if duplicated.size:
            raise OutputError(
                f"{where}: {duplicated.size} duplicate barcodes, e.g. {list(duplicated[:3])}."
            )
        missing = cells.index.difference(frame.index)
        if missing.size:
            raise OutputError(
                f"{where}: {missing.size} of the dataset's {len(cells)} cells are missing, e.g. "
                f"{list(missing[:3])} (barcodes are the index of a table, obs_names of an .h5ad)."
            )
        extra = frame.index.difference(cells.index)
        if extra.size:
            logger.warning(
                "%s: dropping %d cells that are not in the dataset, e.g. %s.",
                where,
                extra.size,
                list(extra[:3]),
            )
        values = frame.loc[cells.index].to_numpy(dtype=np.float64)
        not_finite = int(values.size - np.isfinite(values).sum())
        if not_finite:
            raise OutputError(f"{where}: {not_finite} NaN or infinite values.")
        varying = int((values.std(axis=0) > 0).sum())
        if varying < 2:
            raise OutputError(
                f"{where}: {varying} non-constant dimension(s); an embedding needs at least two."
            )
        return frame.loc[cells.index]
