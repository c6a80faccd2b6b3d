"""Score users' own embeddings (``external``) beside the registered methods, then rebuild the
tables and figures (the reporting pipeline): ``kedro run --pipeline external`` on a finished
run. Wiring only; the nodes are in ``nodes.py``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from kedro.pipeline import Node, Pipeline

from cite_bench import artifacts
from cite_bench.artifacts import CELL_METADATA, EXTERNAL_EMBEDDINGS, EXTERNAL_METRICS
from cite_bench.methods import Method, unintegrated_reference
from cite_bench.pipelines.reporting import create_pipeline as create_reporting_pipeline

from .nodes import check_external_embeddings, compute_umaps, score_external_embeddings


def create_scoring_pipeline(reference: str | None = None) -> Pipeline:
    """Check and score the external embeddings against the ``reference`` method's embedding
    (default: the registry's unintegrated reference), and their UMAPs."""
    with warnings.catch_warnings():
        # Kedro warns about the dot in modelling's namespaced output, which it named itself.
        warnings.filterwarnings("ignore", message="One or more dataset names contain '.'")
        reference_embedding = artifacts.embedding(reference or unintegrated_reference())
        return Pipeline(
            [
                Node(
                    check_external_embeddings,
                    inputs=[EXTERNAL_EMBEDDINGS, CELL_METADATA],
                    outputs="checked_external_embeddings",
                    name="check_external_embeddings",
                ),
                Node(
                    score_external_embeddings,
                    inputs=[
                        "checked_external_embeddings",
                        reference_embedding,
                        CELL_METADATA,
                        "params:evaluation",
                        "params:columns",
                    ],
                    outputs=EXTERNAL_METRICS,
                    name="score_external_embeddings",
                ),
                Node(
                    compute_umaps,
                    inputs=["checked_external_embeddings", "params:evaluation"],
                    outputs="external_umaps",
                    name="compute_external_umaps",
                ),
            ],
            tags=["evaluation", "external"],
        )


def create_pipeline(methods: Mapping[str, Method] | None = None, **kwargs) -> Pipeline:
    reference = unintegrated_reference(methods)
    return create_scoring_pipeline(reference) + create_reporting_pipeline(methods)
