"""Raw CITE-seq data to one preprocessed MuData."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
