"""Users' own methods' embeddings, read from their files as they are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError

from cite_bench.io.hashing import file_sha256


@dataclass(frozen=True)
class ExternalEmbedding:
    """An embedding computed outside the project, as read from its file."""

    frame: pd.DataFrame  # cells x dimensions, indexed by barcode
    path: str
    sha256: str


EXTERNAL_FORMATS = (".parquet", ".csv", ".h5ad")


class ExternalEmbeddingsDataset(AbstractDataset[None, dict[str, ExternalEmbedding]]):
    """Users' own methods' embeddings, one file per method name (``external`` in
    ``conf/base/globals.yml`` or ``--params external.<name>=<file>``): parquet or CSV with the
    cell barcodes as the index, or an ``.h5ad`` with the embedding in ``obsm[<obsm_key>]`` or in
    ``X`` and the barcodes as ``obs_names`` (Open Problems' prediction files). A method is given
    as a path, or as ``{path: ..., obsm_key: ...}``. Read-only; the file's SHA-256 is kept so
    that tracking can record exactly what was scored."""

    def __init__(
        self, *, methods: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self._methods = dict(methods or {})
        self.metadata = metadata

    def load(self) -> dict[str, ExternalEmbedding]:
        return {name: self._read(name, spec) for name, spec in self._methods.items()}

    def _read(self, name: str, spec: Any) -> ExternalEmbedding:
        setting = f"external.{name}"
        if isinstance(spec, str):
            spec = {"path": spec}
        spec = dict(spec or {})
        if not spec.get("path"):
            raise DatasetError(f"{setting}: give the embedding's file (a path, or path: ...).")
        path = Path(str(spec["path"]))
        if not path.is_file():
            raise DatasetError(f"{setting}: embedding file '{path}' does not exist.")
        suffix = path.suffix.lower()
        if suffix not in EXTERNAL_FORMATS:
            raise DatasetError(
                f"{setting}: '{path}' is not a known embedding format (expected "
                f"{', '.join(EXTERNAL_FORMATS)})."
            )
        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(path)
            elif suffix == ".csv":
                frame = pd.read_csv(path, index_col=0)
            else:
                frame = _embedding_from_h5ad(path, spec.get("obsm_key"), setting)
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{setting}: '{path}' cannot be read as {suffix}: {exc}") from exc
        frame.index = frame.index.astype(str)
        frame.columns = [str(column) for column in frame.columns]
        return ExternalEmbedding(frame, str(path), file_sha256(path))

    def save(self, data: Any) -> None:
        raise DatasetError("ExternalEmbeddingsDataset is read-only: users' files stay as they are.")

    def _describe(self) -> dict[str, Any]:
        return {"methods": {name: str(spec) for name, spec in self._methods.items()}}


def _embedding_from_h5ad(path: Path, obsm_key: str | None, setting: str) -> pd.DataFrame:
    adata = ad.read_h5ad(path)
    if obsm_key is not None:
        if obsm_key not in adata.obsm:
            raise DatasetError(
                f"{setting}: '{path}' has no obsm['{obsm_key}'] (obsm keys: "
                f"{sorted(adata.obsm) or 'none'})."
            )
        values = adata.obsm[obsm_key]
    elif adata.X is not None and adata.n_vars > 0:
        values = adata.X
    elif "X_emb" in adata.obsm:
        values = adata.obsm["X_emb"]
    else:
        raise DatasetError(
            f"{setting}: '{path}' has no X; name the embedding with {setting}.obsm_key "
            f"(obsm keys: {sorted(adata.obsm) or 'none'})."
        )
    if hasattr(values, "toarray"):
        values = values.toarray()
    values = np.asarray(values)
    return pd.DataFrame(
        values, index=adata.obs_names, columns=[f"dim_{i}" for i in range(values.shape[1])]
    )
