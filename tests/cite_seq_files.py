"""Write CITE-seq data in the formats users bring, built from the real starter subset: Cell
Ranger's ``filtered_feature_bc_matrix.h5`` and matrix folder, ``.h5mu``, one ``.h5ad``."""

from __future__ import annotations

import functools
import gzip
import io
from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
from scipy import io as scipy_io
from scipy import sparse


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
