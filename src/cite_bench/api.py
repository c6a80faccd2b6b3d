"""Score embeddings from a notebook, without Kedro: one call, one tidy table.

In the spirit of scib-metrics' ``Benchmarker``: give an AnnData or MuData, the embeddings (keys
of ``obsm``, arrays or frames indexed by cell) and the obs columns of labels and batches, and
get every selected metric, raw and scaled between controls, with the bio, batch and overall
aggregates, exactly as ``kedro run`` computes them (the same scoring, the same controls, the
same evaluation defaults)::

    import cite_bench
    table = cite_bench.score(
        mdata, {"my_totalvi": "X_totalVI", "my_mofa": "X_mofa"}, unintegrated="X_pca",
        label_key="cell_type", batch_key="batch", metrics="fast",
    )
    cite_bench.summarise_over_seeds(table)  # one row per method and metric

The registries are there too: ``cite_bench.METHODS``, ``cite_bench.METRICS``,
``cite_bench.PRESETS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd

from cite_bench.evaluate import score_embedding
from cite_bench.methods import METHODS, Role
from cite_bench.methods.controls import gaussian, one_hot, shuffled_within
from cite_bench.parameters import Evaluation
from cite_bench.reporting import TABLE_COLUMNS, add_aggregates, scale_by_controls

Embedding = str | np.ndarray | pd.DataFrame
UNINTEGRATED = "unintegrated"


def score(
    data: ad.AnnData | md.MuData,
    embeddings: Mapping[str, Embedding] | Sequence[str],
    *,
    label_key: str = "cell_type",
    batch_key: str = "batch",
    phase_key: str = "phase",
    unintegrated: Embedding | None = None,
    metrics: str | Sequence[str] | None = None,
    controls: bool = True,
    seed: int = 0,
    **evaluation: Any,
) -> pd.DataFrame:
    """Score ``embeddings`` of the cells of ``data``; the table has ``TABLE_COLUMNS``.

    ``embeddings``: names to ``obsm`` keys, arrays (cells x dimensions, in ``data``'s cell
    order) or frames indexed by cell; a list of ``obsm`` keys names each by its key.
    ``unintegrated``: the embedding without integration (e.g. a PCA of the RNA), scored as the
    ``unintegrated`` baseline; the reference-based metrics (PCR comparison, cell-cycle
    conservation) compare each embedding with it, and two controls shuffle it.
    ``metrics``: a preset or metric keys (``cite_bench.PRESETS``; default: ``kedro run``'s,
    ``scib``, all of them; ``fast`` leaves out kBET and LISI). ``controls``: also score the
    controls whose scores are known in advance, so that each score is scaled between the worst
    and the best of them (0 and 1). Other evaluation settings (``leiden_seeds``,
    ``n_neighbors``, ...; see the parameters reference) go in ``evaluation``.
    """
    chosen = {} if metrics is None else {"metrics": metrics}
    settings = Evaluation(**chosen, seed=seed, **evaluation).model_dump()
    cells = _cells(data, label_key, batch_key, phase_key)
    frames = _frames(data, embeddings, cells.index)
    reference = None if unintegrated is None else _frame(data, unintegrated, cells.index)
    columns = {"label": label_key, "batch": batch_key, "phase": phase_key}
    scored: list[tuple[str, Role, pd.DataFrame, bool]] = [
        (name, "external", frame, False) for name, frame in frames.items()
    ]
    if reference is not None:
        scored.append((UNINTEGRATED, "baseline", reference, True))
    if controls:
        scored += [
            (name, "control", frame, False)
            for name, frame in control_embeddings(cells[label_key], reference, seed).items()
        ]
    tables = [
        score_embedding(
            frame, reference, cells, settings, columns, is_reference=is_reference
        ).assign(method=name, role=role, seed=seed)
        for name, role, frame, is_reference in scored
    ]
    table = scale_by_controls(pd.concat(tables, ignore_index=True), settings["scaling"])
    return add_aggregates(table)[TABLE_COLUMNS]


def control_embeddings(
    labels: pd.Series, unintegrated: pd.DataFrame | None, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """The controls' embeddings for these cells, by the control methods' names and with their
    default settings: noise, the labels (plain and jittered) and, given the unintegrated
    embedding, its cells shuffled (across all cells, and within each cell type)."""
    cells = labels.index
    n_latent = METHODS["random_gaussian"].settings().n_latent
    latents = {"random_gaussian": gaussian(len(cells), n_latent, seed)}
    if labels.notna().any():
        for name in ("cell_type_embedding", "cell_type_embedding_jittered"):
            latents[name] = one_hot(labels, METHODS[name].settings().jitter, seed)
    if unintegrated is not None:
        latent = unintegrated.loc[cells].to_numpy()
        latents["shuffled_cells"] = shuffled_within(latent, np.zeros(len(cells)), seed)
        if labels.notna().any():
            groups = labels.astype(str).to_numpy()
            latents["shuffled_within_cell_types"] = shuffled_within(latent, groups, seed)
    return {name: pd.DataFrame(latent, index=cells) for name, latent in latents.items()}


def _cells(
    data: ad.AnnData | md.MuData, label_key: str, batch_key: str, phase_key: str
) -> pd.DataFrame:
    """The cells' annotations that the metrics read, checked before any work."""
    missing = [key for key in (label_key, batch_key) if key not in data.obs]
    if missing:
        raise KeyError(
            f"No obs column {', '.join(map(repr, missing))} in the data (columns: "
            f"{', '.join(map(str, data.obs.columns))}); pass label_key=/batch_key= to name them."
        )
    wanted = [key for key in (label_key, batch_key, phase_key) if key in data.obs]
    cells = data.obs[wanted].copy()
    cells[label_key] = cells[label_key].astype("category")
    cells[batch_key] = cells[batch_key].astype("category")
    return cells


def _frames(
    data: ad.AnnData | md.MuData,
    embeddings: Mapping[str, Embedding] | Sequence[str],
    cells: pd.Index,
) -> dict[str, pd.DataFrame]:
    named = (
        dict(embeddings) if isinstance(embeddings, Mapping) else {key: key for key in embeddings}
    )
    if not named:
        raise ValueError("No embedding to score: give obsm keys, arrays or frames by name.")
    clashes = sorted(set(named) & {*METHODS, UNINTEGRATED})
    if clashes:
        raise ValueError(
            f"Embedding names {clashes} are the names of the project's methods or controls: "
            "give them other names."
        )
    return {name: _frame(data, embedding, cells) for name, embedding in named.items()}


def _frame(data: ad.AnnData | md.MuData, embedding: Embedding, cells: pd.Index) -> pd.DataFrame:
    """One embedding as a frame indexed by the cells, whatever form it came in."""
    if isinstance(embedding, str):
        if embedding not in data.obsm:
            raise KeyError(
                f"No obsm[{embedding!r}] in the data (obsm keys: "
                f"{', '.join(data.obsm.keys()) or 'none'})."
            )
        embedding = data.obsm[embedding]
    if isinstance(embedding, pd.DataFrame):
        absent = cells.difference(embedding.index)
        if len(absent):
            raise ValueError(
                f"The embedding has no row for {len(absent)} of the {len(cells)} cells "
                f"(e.g. {', '.join(map(str, absent[:3]))})."
            )
        return embedding.loc[cells]
    matrix = np.asarray(embedding)
    if matrix.ndim != 2 or matrix.shape[0] != len(cells):
        raise ValueError(
            f"An embedding array must have one row per cell ({len(cells)}), not shape "
            f"{matrix.shape}."
        )
    return pd.DataFrame(matrix, index=cells)
