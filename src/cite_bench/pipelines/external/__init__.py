"""Score users' own methods' embeddings on a finished run: ``kedro run --pipeline external``."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
