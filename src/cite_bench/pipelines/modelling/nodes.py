"""One training function per method: integration models, baselines and controls.

Every trainer has the same contract, so that one template pipeline serves them all: it takes
the preprocessed MuData, its hyperparameter block (with one ``seed``) and the column names, and
returns the trained model, the embedding (cells x latent dimensions, indexed by barcode) and a
training summary. ``train_over_seeds`` runs a trainer once per seed of the ``seeds`` parameter.
Adding a method means adding a function here, an entry in ``cite_bench.methods.METHODS`` and a
parameter block.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from scipy import sparse

from cite_bench.knn_graph import graph_frame
from cite_bench.seeds import parse_seeds, stack_seeds

from .model_artifacts import MofaModel, PcaModel, RecipeModel

if TYPE_CHECKING:
    from cite_bench.methods import Method

logger = logging.getLogger(__name__)

TrainingResult = tuple[Any, pd.DataFrame, dict[str, Any]]


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


# Early stopping (see conf/base/parameters_modelling.yml), passed to ``train()`` where a block
# sets them: scvi-tools' and Multigrate's ``train()`` take them alike, except that Multigrate
# always monitors its validation reconstruction loss.
EARLY_STOPPING_KEYS = (
    "early_stopping",
    "early_stopping_patience",
    "early_stopping_monitor",
    "train_size",
)
MULTIGRATE_MONITOR = "reconstruction_loss_validation"


def _fit(model: Any, hyperparameters: dict[str, Any]) -> None:
    """Train an scvi-tools-style model with the shared hyperparameters; ``train_kwargs`` has
    the last word."""
    settings = {
        key: hyperparameters[key]
        for key in EARLY_STOPPING_KEYS
        if hyperparameters.get(key) is not None
    }
    with _reproducible_torch(hyperparameters.get("deterministic", True)):
        model.train(
            max_epochs=hyperparameters["max_epochs"],
            accelerator=hyperparameters["accelerator"],
            batch_size=hyperparameters["batch_size"],
            **{**settings, **hyperparameters.get("train_kwargs", {})},
        )


def _fitted_summary(
    name: str, model: Any, mdata: md.MuData, hyperparameters: dict[str, Any], started: float
) -> dict[str, Any]:
    """The training summary of an scvi-tools-style model, from its Lightning history: the
    epochs actually trained, fewer than ``max_epochs`` where early stopping ended training."""
    n_epochs = len(model.history["train_loss"])
    return _summary(
        name,
        mdata,
        hyperparameters,
        started,
        device=str(next(model.module.parameters()).device),
        final_training_loss=_last_loss(model.history, "train_loss"),
        n_epochs_trained=n_epochs,
        stopped_early=n_epochs < hyperparameters["max_epochs"],
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
    # One sample (one batch): nothing to correct, so no batch covariate.
    batch_key = batch if adata.obs[batch].nunique() > 1 else None
    if batch_key is None:
        logger.info("totalVI trains without a batch covariate: one batch in '%s'.", batch)
    scvi.model.TOTALVI.setup_anndata(
        adata, protein_expression_obsm_key="protein_expression", batch_key=batch_key
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
    # One sample (one batch): nothing to correct, so no batch covariate.
    covariates = [batch] if obs[batch].nunique() > 1 else None
    if covariates is None:
        logger.info("Multigrate trains without a batch covariate: one batch in '%s'.", batch)
    mtg.model.MultiVAE.setup_anndata(
        adata, categorical_covariate_keys=covariates, rna_indices_end=rna.n_vars
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
    matrix: sparse.csr_matrix,
    features: pd.Index,
    scale: np.ndarray,
) -> TrainingResult:
    """PCA of ``matrix`` (cells x features), centred and divided by ``scale``, that never
    densifies it: the scaling rescales the stored values and the centring stays implicit (ARPACK
    on a sparse matrix, as ``sc.pp.pca`` does), so 90,000 cells x 2,000 HVGs need the sparse
    matrix's memory, not 1.5 GB per dense copy. ARPACK starts from a vector drawn from the seed.
    A PCA is fitted in one pass; its "loss" in the summary is the share of variance left
    unexplained."""
    from sklearn.decomposition import PCA

    started = time.perf_counter()
    scale = np.where(scale == 0, 1.0, scale)
    scaled = matrix if np.all(scale == 1) else _columns_divided(matrix, scale)
    n_components = min(hyperparameters["n_latent"], min(matrix.shape) - 1)  # ARPACK's limit
    pca = PCA(n_components=n_components, svd_solver="arpack", random_state=hyperparameters["seed"])
    pca.fit(scaled)
    del scaled
    mean = np.asarray(matrix.mean(axis=0)).ravel()
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


def _columns_divided(matrix: sparse.csr_matrix, divisors: np.ndarray) -> sparse.csr_matrix:
    """A copy of ``matrix`` with each column divided by its divisor: scaling keeps zeros zero,
    so the copy stays as sparse as the original."""
    scaled = matrix.copy()
    scaled.data /= divisors[scaled.indices]
    return scaled


def train_pca_rna(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Unintegrated baseline: PCA of the log-normalised highly variable genes."""
    rna = mdata["rna"]
    matrix = sparse.csr_matrix(rna.X, dtype=np.float64)
    return _train_pca(
        "pca_rna", mdata, hyperparameters, matrix, rna.var_names, np.ones(matrix.shape[1])
    )


def train_pca_rna_adt(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Baseline without batch correction: PCA of RNA and ADT features side by side, each
    feature standardised and each modality weighted to carry the same total variance."""
    from sklearn.utils.sparsefuncs import mean_variance_axis

    rna, adt = mdata["rna"], mdata["adt"][mdata["rna"].obs_names]
    # RNA stays sparse; the few ADT columns are dense-ish and are stored sparse beside it.
    matrix = sparse.hstack(
        [sparse.csr_matrix(rna.X), sparse.csr_matrix(adt.X)], format="csr", dtype=np.float64
    )
    _, variance = mean_variance_axis(matrix, axis=0)
    # Standardised, a modality's total variance is its number of features: dividing each
    # feature by sqrt(n_features of its modality) more makes both totals 1.
    widths = np.repeat([rna.n_vars, adt.n_vars], [rna.n_vars, adt.n_vars])
    scale = np.sqrt(variance * widths)
    features = rna.var_names.append(adt.var_names)
    return _train_pca("pca_rna_adt", mdata, hyperparameters, matrix, features, scale)


def train_wnn(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Weighted nearest neighbours (muon's implementation of Seurat's WNN): per-cell modality
    weights combine a kNN graph of the RNA (PCA of the log-normalised HVGs) with one of the
    protein (PCA of the CLR values). Its output is the weighted cell graph, not an embedding:
    each cell's ``n_neighbors`` nearest cells by WNN distance (``cite_bench.knn_graph``)."""
    import muon as mu
    import scanpy as sc

    started = time.perf_counter()
    seed = hyperparameters["seed"]
    cells = mdata["rna"].obs_names
    modalities = {}
    for name, source, n_pcs in (
        ("rna", mdata["rna"], hyperparameters["n_pcs_rna"]),
        ("prot", mdata["adt"][cells], hyperparameters["n_pcs_protein"]),
    ):
        modality = ad.AnnData(X=_dense(source.X).astype(np.float32), obs=pd.DataFrame(index=cells))
        n_comps = min(n_pcs, modality.n_vars - 1, modality.n_obs - 1)
        sc.pp.pca(modality, n_comps=n_comps, random_state=seed)
        sc.pp.neighbors(
            modality,
            n_neighbors=hyperparameters["n_neighbors_per_modality"],
            use_rep="X_pca",
            random_state=seed,
        )
        modalities[name] = modality
    joint = md.MuData(modalities)
    n_neighbors = min(hyperparameters["n_neighbors"], joint.n_obs - 1)
    mu.pp.neighbors(joint, n_neighbors=n_neighbors, key_added="wnn", random_state=seed)
    graph = graph_frame(joint.obsp["wnn_distances"], joint.obs_names, n_neighbors)
    weights = {
        name: round(float(joint.obs[f"{name}:mod_weight"].mean()), 4)
        for name in modalities
        if f"{name}:mod_weight" in joint.obs
    }
    recipe = {**hyperparameters, "mean_modality_weights": weights}
    summary = _untrained_summary(mdata, hyperparameters, started, mean_modality_weights=weights)
    return RecipeModel(recipe), graph, summary


# --- controls: embeddings whose scores are known in advance, to read the others' against -----


def _train_control(
    mdata: md.MuData, hyperparameters: dict[str, Any], latent: np.ndarray
) -> TrainingResult:
    """A control has nothing trained: its settings are what is kept as its model."""
    started = time.perf_counter()
    summary = _untrained_summary(mdata, hyperparameters, started)
    return RecipeModel(hyperparameters), _embedding_frame(latent, mdata["rna"].obs_names), summary


def _untrained_summary(
    mdata: md.MuData, hyperparameters: dict[str, Any], started: float, **extra: Any
) -> dict[str, Any]:
    """The summary of a method with nothing trained: no loss, no epoch."""
    return _summary(
        "untrained",
        mdata,
        hyperparameters,
        started,
        device="cpu",
        final_training_loss=None,
        n_epochs_trained=0,
        **extra,
    )


def train_random_gaussian(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Negative control: independent standard normal coordinates, blind to the data."""
    rng = np.random.default_rng(hyperparameters["seed"])
    latent = rng.standard_normal((mdata["rna"].n_obs, hyperparameters["n_latent"]))
    return _train_control(mdata, hyperparameters, latent)


def _unintegrated_latent(mdata: md.MuData, hyperparameters: dict[str, Any]) -> np.ndarray:
    """The ``pca_rna`` baseline's embedding, which the shuffling controls permute."""
    _, embedding, _ = train_pca_rna(mdata, hyperparameters, {})
    return embedding.to_numpy()


def _shuffled_within(latent: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """The rows of ``latent`` permuted among the cells of each group."""
    rng = np.random.default_rng(seed)
    shuffled = latent.copy()
    for group in pd.unique(groups):
        cells = np.flatnonzero(groups == group)
        shuffled[cells] = latent[rng.permutation(cells)]
    return shuffled


def train_shuffled_cells(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Negative control: the unintegrated embedding with its cells shuffled, so that the
    geometry is realistic but no cell sits where its type or batch would put it."""
    latent = _unintegrated_latent(mdata, hyperparameters)
    groups = np.zeros(latent.shape[0], dtype=int)
    shuffled = _shuffled_within(latent, groups, hyperparameters["seed"])
    return _train_control(mdata, hyperparameters, shuffled)


def train_shuffled_within_cell_types(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Positive control for batch removal: the unintegrated embedding shuffled among the cells
    of each cell type, so that batches mix perfectly within every type while the types keep
    their place (Open Problems' "random integration by cell type")."""
    latent = _unintegrated_latent(mdata, hyperparameters)
    labels = mdata.obs.loc[mdata["rna"].obs_names, columns["label"]].astype(str).to_numpy()
    shuffled = _shuffled_within(latent, labels, hyperparameters["seed"])
    return _train_control(mdata, hyperparameters, shuffled)


def train_cell_type_embedding(
    mdata: md.MuData, hyperparameters: dict[str, Any], columns: dict[str, str]
) -> TrainingResult:
    """Positive control for bio conservation: the cell-type labels one-hot encoded, plus
    uniform noise of ``jitter`` (0 for none) that breaks the ties between cells of a type."""
    labels = mdata.obs.loc[mdata["rna"].obs_names, columns["label"]]
    codes = labels.astype("category").cat.remove_unused_categories().cat.codes.to_numpy()
    latent = np.zeros((codes.size, int(codes.max()) + 1))
    labelled = codes >= 0  # unlabelled cells stay at the origin
    latent[np.flatnonzero(labelled), codes[labelled]] = 1.0
    jitter = float(hyperparameters.get("jitter", 0.0))
    if jitter:
        rng = np.random.default_rng(hyperparameters["seed"])
        latent += rng.uniform(-jitter, jitter, latent.shape)
    return _train_control(mdata, hyperparameters, latent)


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


def train_over_seeds(
    method: Method,
    mdata: md.MuData,
    hyperparameters: dict[str, Any],
    seeds: int | str | list[int],
    columns: dict[str, str],
    controls: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train a method once per seed, so that scores can be reported as mean and spread.

    Returns the models by ``seed_<n>``, the embeddings stacked under a ``seed`` index level
    (``cite_bench.seeds.split_by_seed`` takes them apart) and one summary: means over seeds, and
    each run. A method that does not apply (a control that needs labels on unlabelled data,
    controls switched off) returns no model, an empty embedding and the reason.
    """
    reason = method.skip_reason(mdata.obs, columns, controls)
    if reason:
        logger.warning("Skipping %s: %s.", method.name, reason)
        summary = {"method": method.name, "role": method.role, "skipped": reason}
        return {}, stack_seeds({}), summary
    models, embeddings, runs = {}, {}, []
    for seed in parse_seeds(seeds):
        logger.info("Training %s with seed %d.", method.name, seed)
        model, embedding, summary = method.train(mdata, {**hyperparameters, "seed": seed}, columns)
        models[f"seed_{seed}"] = model
        embeddings[seed] = embedding
        runs.append(summary)
    summary = {"method": method.name, "role": method.role, **_summary_over_seeds(runs)}
    return models, stack_seeds(embeddings), summary


def _summary_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for all seeds: per-run means at the top (what tracking logs), runs below."""
    per_run = ("training_time_s", "final_training_loss", "n_epochs_trained")
    # Per run only: a mean of "stopped early" over seeds would say little.
    run_keys = (*per_run, "stopped_early")

    def mean(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return round(float(np.mean(values)), 6) if values else None

    first = runs[0]
    return {
        "n_cells": first["n_cells"],
        "seeds": [run["seed"] for run in runs],
        "device": first["device"],
        **{key: mean(key) for key in per_run},
        "runs": [{"seed": run["seed"], **{key: run.get(key) for key in run_keys}} for run in runs],
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
