"""The tables and figures of every scored method: ``kedro run --pipeline reporting``."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
