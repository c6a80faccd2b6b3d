"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    pipelines = find_pipelines(raise_errors=True)
    # The tables and figures end both evaluation and external (which also make the UMAPs of
    # the external embeddings it draws): a building block, not a pipeline to run alone.
    pipelines.pop("reporting", None)
    pipelines["__default__"] = sum(pipelines.values())
    return pipelines
