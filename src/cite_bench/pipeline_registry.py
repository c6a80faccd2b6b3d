"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    from cite_bench.pipelines.evaluation.pipeline import create_external_pipeline

    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(pipelines.values())
    # Users' own embeddings scored on a finished run: `kedro run --pipeline external`.
    pipelines["external"] = create_external_pipeline()
    return pipelines
