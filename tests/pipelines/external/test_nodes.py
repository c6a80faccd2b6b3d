"""Users' own methods: embeddings read from files, checked, and scored like trained methods."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from kedro.io.core import DatasetError

from cite_bench.datasets import CiteSeqFilesDataset, ExternalEmbeddingsDataset
from cite_bench.methods import METHODS
from cite_bench.pipelines.data_processing import nodes as processing
from cite_bench.pipelines.evaluation.nodes import compute_metrics
from cite_bench.pipelines.external.nodes import (
    ExternalEmbeddingError,
    check_external_embeddings,
    score_external_embeddings,
)
from cite_bench.reporting import tabulate_metrics
from cite_bench.seeds import stack_seeds
from tests.builders import CONTROLS
from tests.builders import SCORING_PARAMS as PARAMS
from tests.builders import clustered_embedding as _embedding
from tests.builders import labelled_cells as _cells


def _load(tmp_path, frame: pd.DataFrame, suffix: str, **spec) -> dict:
    path = tmp_path / f"embedding{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".csv":
        frame.to_csv(path)
    else:
        ad.AnnData(X=frame.to_numpy(), obs=pd.DataFrame(index=frame.index)).write_h5ad(path)
    return ExternalEmbeddingsDataset(methods={"mine": {"path": str(path), **spec}}).load()


@pytest.fixture(scope="module")
def starter(starter_dir, processing_params, columns):
    """The real starter cells preprocessed, and the pca_rna_adt baseline's embedding of them."""
    raw = CiteSeqFilesDataset(
        rna_filepath=str(starter_dir / "rna.h5ad"), adt_filepath=str(starter_dir / "adt.h5ad")
    ).load()
    paired = processing.validate_input(raw, columns, processing_params)
    mdata = processing.assemble_mudata(
        processing.preprocess_rna(paired, processing_params, columns),
        processing.preprocess_adt(paired, processing_params),
        paired,
    )
    cells = processing.extract_cell_metadata(mdata)

    def embedding_of(name: str):
        return METHODS[name].train(mdata, METHODS[name].settings({"n_latent": 10}), 0, columns)

    reference = embedding_of("pca_rna").output
    embedding = embedding_of("pca_rna_adt").output
    return cells, stack_seeds({0: reference}), embedding


def test_a_prediction_file_scores_as_the_same_matrix_from_parquet_and_as_a_trained_method(
    starter, tmp_path, columns
):
    """The NeurIPS 2021 prediction layout (embedding in X, barcodes as obs_names), a parquet
    table and the trained method give the same scores on the real starter cells."""
    cells, reference, embedding = starter
    trained = compute_metrics(
        METHODS["pca_rna_adt"],
        stack_seeds({0: embedding}),
        reference,
        cells,
        PARAMS,
        columns,
        [0],
        CONTROLS,
    ).set_index("metric")["value"]
    for suffix in (".h5ad", ".parquet", ".csv"):
        loaded = _load(tmp_path, embedding, suffix)
        assert len(loaded["mine"].sha256) == 64
        checked = check_external_embeddings(loaded, cells)
        scored = score_external_embeddings(checked, reference, cells, PARAMS, columns)
        values = scored.set_index("metric")["value"]
        pd.testing.assert_series_equal(values, trained, rtol=1e-5, check_names=False)
        assert (scored["method"] == "mine").all()
    table = tabulate_metrics(PARAMS, external_metrics=scored)
    assert set(table.loc[table["method"] == "mine", "role"]) == {"external"}


def test_an_obsm_key_names_the_embedding(tmp_path):
    cells = _cells()
    frame = _embedding(cells, 5)
    path = tmp_path / "emb.h5ad"
    adata = ad.AnnData(obs=pd.DataFrame(index=cells.index))
    adata.obsm["X_scVI"] = frame.to_numpy()
    adata.write_h5ad(path)
    spec = {"mine": {"path": str(path), "obsm_key": "X_scVI"}}
    loaded = ExternalEmbeddingsDataset(methods=spec).load()
    np.testing.assert_allclose(loaded["mine"].frame.to_numpy(), frame.to_numpy())
    wrong = {"mine": {"path": str(path), "obsm_key": "X_emb"}}
    with pytest.raises(DatasetError, match=r"external.mine: .* has no obsm\['X_emb'\]"):
        ExternalEmbeddingsDataset(methods=wrong).load()


def test_a_missing_cell_is_refused_naming_the_file(tmp_path):
    cells = _cells()
    loaded = _load(tmp_path, _embedding(cells, 5).iloc[3:], ".parquet")
    with pytest.raises(ExternalEmbeddingError, match=r"embedding.parquet\): 3 of the .* missing"):
        check_external_embeddings(loaded, cells)


def test_extra_cells_are_named_and_dropped(tmp_path, caplog):
    cells = _cells()
    frame = _embedding(cells, 5)
    extra = frame.iloc[:2].rename(index=lambda name: f"other-{name}")
    loaded = _load(tmp_path, pd.concat([extra, frame]), ".csv")
    checked = check_external_embeddings(loaded, cells)
    assert list(checked["mine"].index) == list(cells.index)
    assert "dropping 2 cells that are not in the dataset" in caplog.text
    assert "other-cell0" in caplog.text


def test_a_nan_is_refused(tmp_path):
    cells = _cells()
    frame = _embedding(cells, 5)
    frame.iloc[4, 2] = np.nan
    loaded = _load(tmp_path, frame, ".h5ad")
    with pytest.raises(ExternalEmbeddingError, match="1 NaN or infinite values"):
        check_external_embeddings(loaded, cells)


def test_constant_columns_are_refused(tmp_path):
    cells = _cells()
    frame = _embedding(cells, 5).iloc[:, :2]
    frame.iloc[:, 1] = 3.0
    loaded = _load(tmp_path, frame, ".parquet")
    with pytest.raises(ExternalEmbeddingError, match="1 non-constant dimension"):
        check_external_embeddings(loaded, cells)


def test_a_wrong_file_type_is_refused(tmp_path):
    path = tmp_path / "embedding.npy"
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="external.mine: .* not a known embedding format"):
        ExternalEmbeddingsDataset(methods={"mine": str(path)}).load()
    not_parquet = tmp_path / "embedding.parquet"
    not_parquet.write_text("barcode,a\n")
    with pytest.raises(DatasetError, match="cannot be read as .parquet"):
        ExternalEmbeddingsDataset(methods={"mine": str(not_parquet)}).load()
    with pytest.raises(DatasetError, match="does not exist"):
        ExternalEmbeddingsDataset(methods={"mine": str(tmp_path / "absent.csv")}).load()


def test_an_external_method_cannot_take_a_registered_name(tmp_path):
    cells = _cells()
    path = tmp_path / "totalvi.parquet"
    _embedding(cells, 5).to_parquet(path)
    loaded = ExternalEmbeddingsDataset(methods={"totalvi": str(path)}).load()
    with pytest.raises(ExternalEmbeddingError, match="'totalvi' is taken"):
        check_external_embeddings(loaded, cells)
