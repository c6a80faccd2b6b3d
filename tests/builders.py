"""What tests build: CITE-seq data in the formats users bring, written from the real starter
subset (Cell Ranger's ``filtered_feature_bc_matrix.h5`` and matrix folder, ``.h5mu``, one
``.h5ad``), and pipelines run in memory on a ``DataCatalog``, as the Kedro starters test theirs."""

from __future__ import annotations

import functools
import gzip
import io
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner
from scipy import io as scipy_io
from scipy import sparse

from cite_bench.metrics import AGGREGATES, METRICS


@functools.cache
def _starter(starter_dir: Path) -> tuple[ad.AnnData, ad.AnnData]:
    return ad.read_h5ad(starter_dir / "rna.h5ad"), ad.read_h5ad(starter_dir / "adt.h5ad")


def starter_pair(starter_dir: Path, batch: str | None = None) -> tuple[ad.AnnData, ad.AnnData]:
    """Copies of the starter's RNA and ADT AnnData, of one batch (e.g. 's1d1') where given."""
    rna, adt = _starter(starter_dir)
    if batch is not None:
        cells = (rna.obs["batch"] == batch).to_numpy()
        return rna[cells].copy(), adt[cells].copy()
    return rna.copy(), adt.copy()


def cell_ranger_counts(rna: ad.AnnData, adt: ad.AnnData) -> ad.AnnData:
    """RNA and ADT as Cell Ranger reports them: one matrix of integer counts in ``X``, 10x
    feature types, barcodes without a sample suffix, no cell annotations."""
    counts = sparse.hstack([rna.layers["counts"], adt.layers["counts"]], format="csr")
    barcodes = [name.rsplit("-", 1)[0] for name in rna.obs_names]  # 'ACGT-1-s1d1' -> 'ACGT-1'
    var = pd.DataFrame(
        {
            "gene_ids": [*rna.var.get("gene_ids", rna.var_names).astype(str), *adt.var_names],
            "feature_types": ["Gene Expression"] * rna.n_vars + ["Antibody Capture"] * adt.n_vars,
            "genome": "GRCh38",
        },
        index=[*rna.var_names, *adt.var_names],
    )
    return ad.AnnData(X=counts.astype(np.float32), obs=pd.DataFrame(index=barcodes), var=var)


def write_cell_ranger_h5(adata: ad.AnnData, path: Path) -> Path:
    """Cell Ranger's feature-barcode matrix HDF5 layout (v3+): features x barcodes in CSC,
    which is barcodes x features in CSR."""
    counts = sparse.csr_matrix(adata.X)

    def strings(values) -> np.ndarray:
        return np.array([str(value).encode() for value in values], dtype="S")

    with h5py.File(path, "w") as handle:
        handle.attrs["filetype"] = "matrix"
        matrix = handle.create_group("matrix")
        matrix["barcodes"] = strings(adata.obs_names)
        matrix["data"] = counts.data.astype(np.int32)
        matrix["indices"] = counts.indices.astype(np.int64)
        matrix["indptr"] = counts.indptr.astype(np.int64)
        matrix["shape"] = np.array([adata.n_vars, adata.n_obs], dtype=np.int32)
        features = matrix.create_group("features")
        features["_all_tag_keys"] = strings(["genome"])
        features["feature_type"] = strings(adata.var["feature_types"])
        features["genome"] = strings(adata.var["genome"])
        features["id"] = strings(adata.var["gene_ids"])
        features["name"] = strings(adata.var_names)
    return path


def write_cell_ranger_folder(adata: ad.AnnData, folder: Path) -> Path:
    """Cell Ranger's ``filtered_feature_bc_matrix`` folder: ``matrix.mtx.gz`` (features x
    barcodes), ``features.tsv.gz`` (id, name, type) and ``barcodes.tsv.gz``."""
    folder.mkdir(parents=True)
    buffer = io.BytesIO()
    scipy_io.mmwrite(buffer, sparse.coo_matrix(adata.X.T).astype(np.int64), field="integer")
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(buffer.getvalue()))
    features = pd.DataFrame(
        {
            "id": adata.var["gene_ids"].to_numpy(),
            "name": adata.var_names,
            "type": adata.var["feature_types"].to_numpy(),
        }
    )
    with gzip.open(folder / "features.tsv.gz", "wt") as handle:
        features.to_csv(handle, sep="\t", header=False, index=False)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as handle:
        handle.write("\n".join(adata.obs_names) + "\n")
    return folder


def write_h5mu(rna: ad.AnnData, adt: ad.AnnData, path: Path, protein: str = "prot") -> Path:
    """A MuData file as scverse tools write one: modalities ``rna`` and ``prot`` (or ``adt``),
    raw counts in each ``X``, cell annotations on the MuData."""
    obs = rna.obs[["batch", "cell_type"]].copy()
    modalities = {
        "rna": ad.AnnData(X=rna.layers["counts"].copy(), var=rna.var[["feature_types"]].copy()),
        protein: ad.AnnData(X=adt.layers["counts"].copy(), var=adt.var[["feature_types"]].copy()),
    }
    for modality in modalities.values():
        modality.obs_names = rna.obs_names
    mdata = md.MuData(modalities)
    mdata.obs = obs
    mdata.write_h5mu(path)
    return path


# --- pipelines in memory ----------------------------------------------------------------------


class KeptDataset(MemoryDataset):
    """An in-memory dataset the runner does not empty once its last reader ran, so that a test
    can read every intermediate result after the run. Objects are passed on, not deep-copied,
    as the project's catalog passes scverse objects (nodes copy what they change)."""

    def __init__(self, data: Any = None) -> None:
        super().__init__(data, copy_mode="assign")

    def _release(self) -> None:
        pass


def run_in_memory(pipeline: Pipeline, inputs: dict[str, Any]) -> DataCatalog:
    """Run ``pipeline`` with ``SequentialRunner`` on a catalog of in-memory datasets holding
    ``inputs`` (parameters as ``params:<name>``); every dataset it writes stays readable in the
    returned catalog."""
    names = pipeline.datasets() | set(inputs)
    catalog = DataCatalog(
        {name: KeptDataset(inputs[name]) if name in inputs else KeptDataset() for name in names}
    )
    SequentialRunner().run(pipeline, catalog)
    return catalog


def stacked(frame: pd.DataFrame) -> pd.DataFrame:
    """A method's embedding as modelling stores it (seeds stacked), trained with seed 0."""
    from cite_bench.seeds import stack_seeds

    return stack_seeds({0: frame})


# --- scores ------------------------------------------------------------------------------------

# Evaluation settings small enough for tests.
SCORING_PARAMS = {
    "n_neighbors": 15,
    "lisi_neighbors": 30,
    "seed": 0,
    "leiden_resolutions": [0.1, 2.0, 5],
    "leiden_flavor": "igraph",
    "metrics": "scib",
    "rank_by": "scaled",
    "scaling": {"min_control_range": 0.01, "flag_outside": [-0.5, 1.5]},
}
CONTROLS = {"enabled": True}


def labelled_cells(n_types: int = 4, per_type: int = 60, n_batches: int = 2) -> pd.DataFrame:
    """Cells of ``n_types`` types spread evenly over ``n_batches`` batches."""
    labels = np.repeat([f"type{i}" for i in range(n_types)], per_type)
    batches = np.tile([f"s1d{j + 1}" for j in range(n_batches)], n_types * per_type // n_batches)
    index = [f"cell{i}" for i in range(labels.size)]
    return pd.DataFrame(
        {"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)}, index=index
    )


def clustered_embedding(cells: pd.DataFrame, separation: float, seed: int = 0) -> pd.DataFrame:
    """A 10-dimensional embedding whose cell types lie ``separation`` apart, in noise."""
    rng = np.random.default_rng(seed)
    codes = cells["cell_type"].cat.codes.to_numpy()
    centres = rng.normal(0, 1, (codes.max() + 1, 10)) * separation
    values = centres[codes] + rng.normal(0, 1, (codes.size, 10))
    return pd.DataFrame(values, index=cells.index, columns=[f"latent_{i}" for i in range(10)])


def summary_table(seeds: tuple[int, ...] = (0,)) -> pd.DataFrame:
    rows = []
    methods = (("a", 0.5), ("b", 0.8), ("c", 0.6), ("random_gaussian", 0.9))
    for method, overall in methods:
        for seed in seeds:
            for metric in [*METRICS, *AGGREGATES]:
                value = overall + 0.02 * seed if metric == "overall" else 0.7
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "metric": metric,
                        "value": value,
                        "scaled": value,
                        "note": "",
                        "scaled_note": "",
                    }
                )
            rows.append(
                {
                    "method": "c",
                    "seed": seed,
                    "metric": "kbet",
                    "value": np.nan,
                    "scaled": np.nan,
                    "note": "skipped",
                    "scaled_note": "",
                }
            )
    return pd.DataFrame(rows).drop_duplicates(["method", "seed", "metric"], keep="last")
