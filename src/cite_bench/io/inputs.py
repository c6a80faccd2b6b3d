"""The one raw-input dataset: the built-in demo, or the user's data in any supported format.

What a path holds decides how it is read (``cite_bench.io.readers.READERS``), so a Kedro
environment names a dataset (its files, columns, training lengths), never a format. Read-only:
raw inputs are never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import mudata as md
from kedro.io.core import AbstractDataset, DatasetError

from cite_bench.io.readers import read_input
from cite_bench.io.readers.pair import read_pair
from cite_bench.io.readers.samples import read_samples
from cite_bench.simulation import simulate_cite_seq


class CiteSeqInputDataset(AbstractDataset[None, ad.AnnData | md.MuData]):
    """Raw CITE-seq counts, from what is named (the first that applies):

    - ``samples`` (``{name: path}``): several Cell Ranger outputs, the sample as batch
      (``obs[sample_column]``);
    - ``filepath`` and ``adt_filepath``: separate RNA and ADT AnnData files, as one MuData;
    - ``filepath``: one file or folder of any format in ``READERS`` (``.h5ad``, ``.h5mu``, Cell
      Ranger ``.h5`` or matrix folder, AnnData ``.zarr``), recognised by its content;
    - nothing: the built-in demo, simulated with ``demo`` (``cite_bench.simulation``).

    ``load_args`` go to the reader (``backed: r`` keeps an ``.h5ad``'s matrices on disk)."""

    def __init__(
        self,
        *,
        filepath: str | None = None,
        adt_filepath: str | None = None,
        samples: dict[str, str] | None = None,
        sample_column: str = "batch",
        load_args: dict[str, Any] | None = None,
        demo: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(filepath) if filepath else None
        self._adt_path = Path(adt_filepath) if adt_filepath else None
        self._samples = {str(name): Path(path) for name, path in (samples or {}).items()}
        self._sample_column = sample_column
        self._load_args = dict(load_args or {})
        self._demo = dict(demo or {})
        self.metadata = metadata
        if self._samples and self._path is not None:
            raise DatasetError(
                f"Both samples ({', '.join(self._samples)}) and a file ('{self._path}') are "
                "named as the input: name one, `inputs.samples.<name>=...` or `inputs.path=...` "
                "(an environment's globals.yml may name the other)."
            )
        if self._adt_path is not None and self._path is None:
            raise DatasetError(
                f"An ADT file is named ('{self._adt_path}') but no RNA file: give both, "
                "`--params inputs.path=/path/rna.h5ad,inputs.adt_path=/path/adt.h5ad`."
            )

    def load(self) -> ad.AnnData | md.MuData:
        if self._samples:
            return read_samples(self._samples, self._sample_column)
        if self._path is not None and self._adt_path is not None:
            return read_pair(self._path, self._adt_path)
        if self._path is not None:
            return read_input(self._path, self._load_args)
        return simulate_cite_seq(**self._demo)

    def save(self, data: Any) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: raw inputs are never written.")

    def _describe(self) -> dict[str, Any]:
        if self._samples:
            return {"samples": {name: str(path) for name, path in self._samples.items()}}
        if self._path is None:
            return {"demo": self._demo}
        described = {"filepath": str(self._path)}
        if self._adt_path is not None:
            described["adt_filepath"] = str(self._adt_path)
        return described

    def _exists(self) -> bool:
        paths = list(self._samples.values()) or [self._path, self._adt_path]
        return all(path.exists() for path in paths if path is not None)


class SimulatedCiteSeqDataset(AbstractDataset[None, ad.AnnData]):
    """The built-in demo: simulated CITE-seq counts in the GEO file's layout, generated on load
    (no network, no file). Read-only; see ``cite_bench.simulation``."""

    def __init__(self, *, metadata: dict[str, Any] | None = None, **simulation_args: Any) -> None:
        self._simulation_args = simulation_args
        self.metadata = metadata

    def load(self) -> ad.AnnData:
        return simulate_cite_seq(**self._simulation_args)

    def save(self, data: ad.AnnData) -> None:
        raise DatasetError("SimulatedCiteSeqDataset is read-only: it is generated on load.")

    def _describe(self) -> dict[str, Any]:
        return dict(self._simulation_args)


# --- the datasets of one layout each, from before the registry; they read by content too ---


class CiteSeqFilesDataset(CiteSeqInputDataset):
    """Separate RNA and ADT ``.h5ad`` files of the same cells, as one ``MuData``."""

    def __init__(
        self, *, rna_filepath: str, adt_filepath: str, metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__(filepath=rna_filepath, adt_filepath=adt_filepath, metadata=metadata)


class CiteSeqH5adDataset(CiteSeqInputDataset):
    """One ``.h5ad`` (e.g. the GEO file); ``load_args: {backed: r}`` keeps it on disk."""

    def __init__(
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(filepath=filepath, load_args=load_args, metadata=metadata)


class CiteSeqH5muDataset(CiteSeqInputDataset):
    """One ``.h5mu`` with modalities ``rna`` and ``prot`` or ``adt``."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(filepath=filepath, metadata=metadata)


class CellRangerDataset(CiteSeqInputDataset):
    """One Cell Ranger output: ``filtered_feature_bc_matrix.h5`` or its folder."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(filepath=filepath, metadata=metadata)


class CellRangerSamplesDataset(CiteSeqInputDataset):
    """Several Cell Ranger outputs under sample names, the sample as batch."""

    def __init__(
        self,
        *,
        samples: dict[str, str] | None,
        sample_column: str = "batch",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(samples=samples, sample_column=sample_column, metadata=metadata)

    def load(self) -> ad.AnnData:
        return read_samples(self._samples, self._sample_column)
