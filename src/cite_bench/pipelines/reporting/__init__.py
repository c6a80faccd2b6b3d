"""The tables and figures of every scored method: the last part of the evaluation and external
pipelines (``kedro run --pipeline evaluation`` or ``external`` rebuilds them)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
