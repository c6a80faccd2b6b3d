"""Several Cell Ranger outputs (one run per donor or lane), each a ``.h5`` file or matrix folder
under a sample name, as one AnnData: the sample name is the batch and is appended to each
barcode (``AAACCCAAGAAACCAT-1-donor1``), which makes barcodes unique across samples. Only
features found in every sample are kept (the log counts the others)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import pandas as pd
from kedro.io.core import DatasetError

from cite_bench.io.readers import require_format
from cite_bench.io.readers.tenx import READER_PHRASE, read_cell_ranger

logger = logging.getLogger(__name__)

_FEATURE_NAME = "feature_name"


def read_samples(samples: Mapping[str, Path], sample_column: str = "batch") -> ad.AnnData:
    """The samples as one AnnData, the sample name in ``obs[sample_column]``."""
    if not samples:
        raise DatasetError(
            "No samples given: name each Cell Ranger output, e.g. "
            "`--params inputs.samples.donor1=/path/donor1.h5,"
            "inputs.samples.donor2=/path/donor2/filtered_feature_bc_matrix`."
        )
    parts = {}
    for name, path in samples.items():
        require_format(Path(path), ("10x_h5", "10x_mtx"), READER_PHRASE)
        # Matched by feature ID: unique, where a gene and its antibody may share a name.
        adata = read_cell_ranger(Path(path))
        adata.var[_FEATURE_NAME] = adata.var_names
        adata.var_names = adata.var["gene_ids"].astype(str)
        parts[name] = adata
    common = pd.Index(next(iter(parts.values())).var_names)
    for adata in parts.values():
        common = common.intersection(adata.var_names, sort=False)
    partial = {name: adata.n_vars - common.size for name, adata in parts.items()}
    if any(partial.values()):
        logger.warning(
            "Kept the %d features found in every sample; dropped those missing from some "
            "sample (%s).",
            common.size,
            ", ".join(f"{n} only in {name}" for name, n in partial.items() if n),
        )
    combined = ad.concat(parts, join="inner", merge="same", label=sample_column, index_unique="-")
    combined.var_names = combined.var.pop(_FEATURE_NAME).astype(str)
    return combined
