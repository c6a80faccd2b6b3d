"""Scoring of every model's embedding with scib metrics."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
