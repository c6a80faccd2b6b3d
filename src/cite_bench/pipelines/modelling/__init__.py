"""Integration models, one namespaced modular pipeline each."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
