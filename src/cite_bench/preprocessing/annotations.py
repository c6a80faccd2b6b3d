"""The cells' annotations (batch, label, site, donor, phase) collected from a raw input."""

from __future__ import annotations

import logging
import re

import mudata as md
import numpy as np
import pandas as pd

from cite_bench.preprocessing.counts import InputDataError

logger = logging.getLogger(__name__)

# The batch of every cell of an input without a batch column: one sample is one batch.
SINGLE_BATCH = "all"
_BATCH_PATTERN = re.compile(r"^(?P<site>s\d+)(?P<donor>d\d+)$")


def shared_annotations(raw: md.MuData) -> pd.DataFrame:
    """The MuData's own cell annotations (not copies of a modality's, ``rna:...``)."""
    prefixes = tuple(f"{name}:" for name in raw.mod)
    return raw.obs[[column for column in raw.obs if not str(column).startswith(prefixes)]]


def cell_annotations(
    rna_obs: pd.DataFrame,
    adt_obs: pd.DataFrame,
    columns: dict[str, str],
    shared_obs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Collect the annotation columns: a MuData's own first, then RNA's, then ADT's."""
    cells = rna_obs.index
    sources = [rna_obs, adt_obs.set_axis(cells)]
    if shared_obs is not None and shared_obs.shape[1]:
        sources.insert(0, shared_obs.reindex(cells))
    batch = columns["batch"]
    if batch in rna_obs and batch in adt_obs and rna_obs is not adt_obs:
        _check_same_batches(rna_obs[batch], adt_obs[batch], batch)
    obs = pd.DataFrame(index=cells)
    # ``phase`` (cell-cycle phase, for evaluation) is optional, in the columns and in the data.
    for key in ("batch", "label", "site", "donor", "phase"):
        column = columns.get(key)
        for source in sources if column else ():
            if column in source:
                obs[column] = source[column].to_numpy()
                break
    if batch not in obs:
        logger.warning(
            "obs has no batch column '%s': the %d cells are taken for one sample (batch '%s'). "
            "The models train without a batch covariate and the batch-correction metrics do "
            "not apply. Set columns.batch if the data hold several samples.",
            batch,
            len(cells),
            SINGLE_BATCH,
        )
        obs[batch] = SINGLE_BATCH
    if obs[batch].isna().any():
        raise InputDataError(
            f"Batch column '{batch}' is empty for {int(obs[batch].isna().sum())} cells."
        )
    obs[batch] = obs[batch].astype(str)
    for key in ("site", "donor"):
        column = columns[key]
        if column in obs and obs[column].isna().any():
            raise InputDataError(
                f"{key.capitalize()} column '{column}' is empty for "
                f"{int(obs[column].isna().sum())} cells: fill it in, or remove the column to "
                f"derive it from the batch column '{batch}'."
            )
    if columns["label"] not in obs:
        logger.warning(
            "obs has no label column '%s': the models train as usual, and evaluation skips "
            "the metrics that need cell-type labels.",
            columns["label"],
        )
    _add_site_and_donor(obs, columns)
    for column in obs:
        # Plain string categories; missing labels stay missing (not the string 'nan').
        values = obs[column]
        obs[column] = pd.Categorical(values.astype(str).where(values.notna(), None))
    return obs


def _check_same_batches(rna_batch: pd.Series, adt_batch: pd.Series, batch: str) -> None:
    """RNA and ADT of one cell come from one sample: a disagreement means mismatched files."""
    rna_values = rna_batch.astype(str).to_numpy()
    adt_values = adt_batch.astype(str).to_numpy()
    differ = np.flatnonzero(rna_values != adt_values)
    if differ.size:
        first = differ[0]
        raise InputDataError(
            f"RNA and ADT disagree on the batch ('{batch}') of {differ.size} cells, e.g. "
            f"'{rna_batch.index[first]}': '{rna_values[first]}' (RNA) vs "
            f"'{adt_values[first]}' (ADT). Are both files of the same samples?"
        )


def _add_site_and_donor(obs: pd.DataFrame, columns: dict[str, str]) -> None:
    """Derive missing site and donor columns from batches named like 's1d2'; for other batch
    names the batch serves as site (the batch key of the highly variable genes)."""
    batch, site, donor = columns["batch"], columns["site"], columns["donor"]
    if site in obs and donor in obs:
        return
    parts = obs[batch].str.extract(_BATCH_PATTERN)
    if parts.notna().all().all():
        if site not in obs:
            obs[site] = parts["site"]
        if donor not in obs:
            obs[donor] = parts["donor"]
    elif site not in obs:
        logger.info(
            "obs has no site column '%s' and batches such as %s are not named like 's1d2': the "
            "batch serves as site.",
            site,
            list(obs[batch].unique()[:3]),
        )
        obs[site] = obs[batch]
