"""One training function per integration model.

Every trainer has the same contract, so that one template pipeline serves them all: it takes
the preprocessed MuData, its hyperparameter block (with one ``seed``) and the column names, and
returns the trained model, the embedding (cells x latent dimensions, indexed by barcode) and a
training summary. ``train_over_seeds`` runs a trainer once per seed of the ``seeds`` parameter.
Adding a model means adding a function here, an entry in ``TRAINERS`` and a parameter block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from .model_artifacts import MofaModel, PcaModel

logger = logging.getLogger(__name__)

TrainingResult = tuple[Any, pd.DataFrame, dict[str, Any]]
SEED_LEVEL = "seed"


def _embedding_frame(latent: np.ndarray, cells: pd.Index) -> pd.DataFrame:
    latent = np.asarray(latent, dtype=np.float32)
    if not np.isfinite(latent).all():
        raise FloatingPointError("The model produced a non-finite embedding.")
    columns = [f"latent_{i}" for i in range(latent.shape[1])]
    return pd.DataFrame(latent, index=pd.Index(cells, name="barcode"), columns=columns)


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


def _summary(
    model: str, mdata: md.MuData, hyperparameters: dict[str, Any], started: float, **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "n_cells": int(mdata.n_obs),
        "seed": int(hyperparameters["seed"]),
        "training_time_s": round(time.perf_counter() - started, 3),
        **extra,
        "versions": library_versions(),
    }


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def _last_loss(history: dict[str, pd.DataFrame], key: str) -> float | None:
    """The final epoch's value of a Lightning-logged loss, if it was logged."""
    if key not in history or history[key].empty:
        return None
    return float(history[key].iloc[-1, 0])


def _fit(model: Any, hyperparameters: dict[str, Any]) -> None:
    """Train an scvi-tools-style model with the shared hyperparameters."""
    with _reproducible_torch(hyperparameters.get("deterministic", True)):
        model.train(
            max_epochs=hyperparameters["max_epochs"],
            accelerator=hyperparameters["accelerator"],
            batch_size=hyperparameters["batch_size"],
            **hyperparameters.get("train_kwargs", {}),
        )


def _fitted_summary(
    name: str, model: Any, mdata: md.MuData, hyperparameters: dict[str, Any], started: float
) -> dict[str, Any]:
    """The training summary of an scvi-tools-style model, from its Lightning history."""
    return _summary(
        name,
        mdata,
        hyperparameters,
        started,
        device=str(next(model.module.parameters()).device),
        final_training_loss=_last_loss(model.history, "train_loss"),
        n_epochs_trained=len(model.history["train_loss"]),
    )


def train_mofa(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """MOFA+ (mofapy2 via muon) on log-normalised RNA and CLR-transformed ADT."""
    import muon as mu

    started = time.perf_counter()
    data = mdata.copy()
    use_gpu = _use_gpu(hyperparameters["accelerator"])
    if use_gpu and not _cupy_available():
        logger.warning("MOFA runs on the CPU: mofapy2 needs cupy for the GPU, and it is missing.")
        use_gpu = False
    with tempfile.TemporaryDirectory() as scratch:
        # mofapy2 can only hand its model over as an HDF5 file: read it back into memory.
        outfile = Path(scratch) / "mofa.hdf5"
        mu.tl.mofa(
            data,
            n_factors=hyperparameters["n_factors"],
            n_iterations=hyperparameters["n_iterations"],
            convergence_mode=hyperparameters["convergence_mode"],
            use_float32=hyperparameters["use_float32"],
            groups_label=hyperparameters.get("groups_key"),
            use_var=None,
            gpu_mode=use_gpu,
            seed=hyperparameters["seed"],
            outfile=str(outfile),
            quiet=True,
        )
        model = MofaModel(outfile.read_bytes())
    summary = _summary(
        "mofa",
        mdata,
        hyperparameters,
        started,
        device="cuda" if use_gpu else "cpu",
        final_training_loss=model.final_elbo(),
        n_epochs_trained=model.n_iterations(),
    )
    return model, _embedding_frame(data.obsm["X_mofa"], data.obs_names), summary


def train_totalvi(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """totalVI (scvi-tools) on raw RNA counts and raw, dense protein counts."""
    import scvi

    started = time.perf_counter()
    scvi.settings.seed = hyperparameters["seed"]
    rna, adt = mdata["rna"], mdata["adt"]
    batch = columns["batch"]
    adata = ad.AnnData(
        X=sparse.csr_matrix(rna.layers["counts"]),
        obs=mdata.obs[[batch]].loc[rna.obs_names].copy(),
        var=pd.DataFrame(index=rna.var_names),
    )
    # totalVI's protein prior needs dense protein counts.
    adata.obsm["protein_expression"] = pd.DataFrame(
        _dense(adt[rna.obs_names].layers["counts"]).astype(np.float32),
        index=rna.obs_names,
        columns=adt.var_names,
    )
    scvi.model.TOTALVI.setup_anndata(
        adata, protein_expression_obsm_key="protein_expression", batch_key=batch
    )
    model = scvi.model.TOTALVI(
        adata, n_latent=hyperparameters["n_latent"], **hyperparameters.get("model_kwargs", {})
    )
    _fit(model, hyperparameters)
    summary = _fitted_summary("totalvi", model, mdata, hyperparameters, started)
    return model, _embedding_frame(model.get_latent_representation(), adata.obs_names), summary


def train_multigrate(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Multigrate (MultiVAE) on raw RNA counts (NB loss) and CLR-transformed ADT (MSE loss)."""
    import multigrate as mtg
    import scvi

    started = time.perf_counter()
    scvi.settings.seed = hyperparameters["seed"]
    batch = columns["batch"]
    obs = mdata.obs[[batch]].loc[mdata["rna"].obs_names].copy()
    rna = ad.AnnData(
        X=sparse.csr_matrix(mdata["rna"].X),
        obs=obs,
        var=pd.DataFrame(index=mdata["rna"].var_names),
        layers={"counts": sparse.csr_matrix(mdata["rna"].layers["counts"])},
    )
    adt = ad.AnnData(
        X=_dense(mdata["adt"][rna.obs_names].X).astype(np.float32),
        obs=obs.copy(),
        var=pd.DataFrame(index=mdata["adt"].var_names),
    )
    adata = mtg.data.organize_multimodal_anndatas(
        adatas=[[rna], [adt]], layers=[["counts"], [None]]
    )
    mtg.model.MultiVAE.setup_anndata(
        adata, categorical_covariate_keys=[batch], rna_indices_end=rna.n_vars
    )
    model = mtg.model.MultiVAE(
        adata,
        losses=["nb", "mse"],
        z_dim=hyperparameters["n_latent"],
        **hyperparameters.get("model_kwargs", {}),
    )
    _fit(model, hyperparameters)
    with _reproducible_torch(hyperparameters.get("deterministic", True)):
        model.get_model_output(batch_size=hyperparameters["batch_size"])
    summary = _fitted_summary("multigrate", model, mdata, hyperparameters, started)
    return model, _embedding_frame(adata.obsm["X_multigrate"], adata.obs_names), summary


def _train_pca(
    name: str,
    mdata: md.MuData,
    hyperparameters: dict[str, Any],
    blocks: list[np.ndarray],
    features: pd.Index,
    scale: np.ndarray,
) -> TrainingResult:
    """PCA of the side-by-side ``blocks``, centred and divided by ``scale``. A PCA is fitted in
    one pass; its "loss" in the summary is the share of variance left unexplained."""
    from sklearn.decomposition import PCA

    started = time.perf_counter()
    matrix = np.hstack(blocks)
    mean = matrix.mean(axis=0)
    scale = np.where(scale == 0, 1.0, scale)
    n_components = min(hyperparameters["n_latent"], *matrix.shape)
    pca = PCA(n_components=n_components, random_state=hyperparameters["seed"])
    pca.fit((matrix - mean) / scale)
    model = PcaModel(features.to_numpy(), mean, scale, pca.components_)
    model.unexplained_variance = float(1 - pca.explained_variance_ratio_.sum())
    summary = _summary(
        name,
        mdata,
        hyperparameters,
        started,
        device="cpu",
        final_training_loss=model.unexplained_variance,
        n_epochs_trained=1,
    )
    return model, _embedding_frame(model.transform(matrix), mdata["rna"].obs_names), summary


def train_pca_rna(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Unintegrated baseline: PCA of the log-normalised highly variable genes."""
    rna = _dense(mdata["rna"].X).astype(np.float64)
    return _train_pca(
        "pca_rna", mdata, hyperparameters, [rna], mdata["rna"].var_names, np.ones(rna.shape[1])
    )


def train_pca_rna_adt(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Baseline without batch correction: PCA of RNA and ADT features side by side, each
    feature standardised and each modality weighted to carry the same total variance."""
    rna, adt = mdata["rna"], mdata["adt"][mdata["rna"].obs_names]
    blocks = [_dense(rna.X).astype(np.float64), _dense(adt.X).astype(np.float64)]
    scale = np.concatenate([block.std(axis=0) * np.sqrt(block.shape[1]) for block in blocks])
    features = rna.var_names.append(adt.var_names)
    return _train_pca("pca_rna_adt", mdata, hyperparameters, blocks, features, scale)


@contextlib.contextmanager
def _reproducible_torch(enabled: bool) -> Iterator[None]:
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


def parse_seeds(seeds: int | str | list[int]) -> list[int]:
    """The ``seeds`` parameter as a list: a YAML list, one seed, or seeds separated by spaces
    (``kedro run --params "seeds=0 1 2"``: Kedro splits ``--params`` at commas)."""
    values = seeds.split() if isinstance(seeds, str) else seeds
    values = values if isinstance(values, list | tuple) else [values]
    if not all(
        (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
        for value in values
    ):
        raise ValueError(f"seeds: expected whole numbers, got {seeds!r}")
    parsed = [int(value) for value in values]
    if not parsed or any(seed < 0 for seed in parsed) or len(set(parsed)) != len(parsed):
        raise ValueError(f"seeds: expected distinct non-negative whole numbers, got {seeds!r}")
    return parsed


def train_over_seeds(
    trainer: Callable[..., TrainingResult],
    mdata: md.MuData,
    hyperparameters: dict[str, Any],
    seeds: int | str | list[int],
    columns: dict[str, str],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train a model once per seed, so that scores can be reported as mean and spread.

    Returns the models by ``seed_<n>``, the embeddings stacked under a ``seed`` index level
    (``split_by_seed`` takes them apart) and one summary: means over seeds, and each run.
    """
    models, embeddings, runs = {}, [], []
    for seed in parse_seeds(seeds):
        logger.info("Training %s with seed %d.", trainer.__name__, seed)
        model, embedding, summary = trainer(mdata, {**hyperparameters, "seed": seed}, columns)
        models[f"seed_{seed}"] = model
        embeddings.append(embedding)
        runs.append(summary)
    stacked = pd.concat(embeddings, keys=[run["seed"] for run in runs], names=[SEED_LEVEL])
    return models, stacked, _summary_over_seeds(runs)


def split_by_seed(embedding: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """The per-seed embeddings (indexed by barcode) of ``train_over_seeds``' stacked output."""
    if SEED_LEVEL not in embedding.index.names:
        raise ValueError(
            f"Expected an embedding with a '{SEED_LEVEL}' index level, got {embedding.index.names}."
        )
    return {
        int(seed): frame.droplevel(SEED_LEVEL)
        for seed, frame in embedding.groupby(level=SEED_LEVEL, sort=False)
    }


def first_seed(embedding: pd.DataFrame) -> pd.DataFrame:
    """The embedding of the first seed: the one drawn, and the unintegrated reference."""
    return next(iter(split_by_seed(embedding).values()))


def _summary_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for all seeds: per-run means at the top (what tracking logs), runs below."""
    per_run = ("training_time_s", "final_training_loss", "n_epochs_trained")

    def mean(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return round(float(np.mean(values)), 6) if values else None

    first = runs[0]
    return {
        "model": first["model"],
        "n_cells": first["n_cells"],
        "seeds": [run["seed"] for run in runs],
        "device": first["device"],
        **{key: mean(key) for key in per_run},
        "runs": [{"seed": run["seed"], **{key: run.get(key) for key in per_run}} for run in runs],
        "versions": first["versions"],
    }


def _use_gpu(accelerator: str) -> bool:
    """Whether an accelerator setting asks for, or (``auto``) allows, the GPU."""
    import torch

    if accelerator == "cpu":
        return False
    available = torch.cuda.is_available()
    if accelerator == "gpu" and not available:
        raise RuntimeError("accelerator='gpu' was asked for, but torch sees no CUDA device.")
    return available


def _cupy_available() -> bool:
    """mofapy2 runs on the GPU through cupy only."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


TRAINERS: dict[str, Callable[..., TrainingResult]] = {
    "mofa": train_mofa,
    "totalvi": train_totalvi,
    "multigrate": train_multigrate,
    # Baselines to beat: no batch correction.
    "pca_rna": train_pca_rna,
    "pca_rna_adt": train_pca_rna_adt,
}
