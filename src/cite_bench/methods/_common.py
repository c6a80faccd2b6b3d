"""Small pieces every kind of method shares: the embedding frame, devices, recorded versions."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

logger = logging.getLogger(__name__)

# Packages whose versions decide the numbers; recorded with every trained model.
RECORDED_PACKAGES = (
    "numpy",
    "scipy",
    "anndata",
    "mudata",
    "scanpy",
    "muon",
    "mofapy2",
    "torch",
    "scvi-tools",
    "multigrate",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def embedding_frame(latent: Any, cells: pd.Index) -> pd.DataFrame:
    """Cells x ``latent_<i>`` columns indexed by barcode; a non-finite value is a failed fit."""
    latent = np.asarray(latent, dtype=np.float32)
    if not np.isfinite(latent).all():
        raise FloatingPointError("The model produced a non-finite embedding.")
    columns = [f"latent_{i}" for i in range(latent.shape[1])]
    return pd.DataFrame(latent, index=pd.Index(cells, name="barcode"), columns=columns)


def dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def use_gpu(accelerator: str) -> bool:
    """Whether an accelerator setting asks for, or (``auto``) allows, the GPU."""
    import torch

    if accelerator == "cpu":
        return False
    available = torch.cuda.is_available()
    if accelerator == "gpu" and not available:
        raise RuntimeError("accelerator='gpu' was asked for, but torch sees no CUDA device.")
    return available


@contextlib.contextmanager
def reproducible_torch(enabled: bool) -> Iterator[None]:
    """Deterministic torch kernels while training, so that a seed gives identical numbers
    (Multigrate otherwise differs in the last bits between reruns on the CPU)."""
    import torch

    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def batch_covariate(obs: pd.DataFrame, batch: str, method: str) -> str | None:
    """The batch column to correct for, or ``None`` for one sample: nothing to correct."""
    if obs[batch].nunique() > 1:
        return batch
    logger.info("%s trains without a batch covariate: one batch in '%s'.", method, batch)
    return None
