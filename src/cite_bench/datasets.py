"""The catalog's dataset classes, by the names ``conf/*/catalog.yml`` uses
(``type: cite_bench.datasets.X``). The code lives in ``cite_bench.io``: atomic writes
(``atomic``), scverse containers (``h5``), the raw input and its readers (``inputs``,
``readers``), the model store (``models``), external embeddings (``external``)."""

from cite_bench.io.atomic import (
    JSONDataset,
    MatplotlibDataset,
    ParquetDataset,
    TextDataset,
    _temporary_sibling,
    atomic_path,
    recover_interrupted_writes,
)
from cite_bench.io.external import ExternalEmbedding, ExternalEmbeddingsDataset
from cite_bench.io.h5 import AnnDataDataset, MuDataDataset, read_h5ad_backed
from cite_bench.io.hashing import file_sha256
from cite_bench.io.inputs import (
    CellRangerDataset,
    CellRangerSamplesDataset,
    CiteSeqFilesDataset,
    CiteSeqH5adDataset,
    CiteSeqH5muDataset,
    CiteSeqInputDataset,
    SimulatedCiteSeqDataset,
)
from cite_bench.io.models import (
    TORCH_DATA_GLOBALS,
    ModelDataset,
    _allowed_model_class,
)
from cite_bench.io.readers import INPUT_FORMATS, READERS, input_format
from cite_bench.io.readers.tenx import read_cell_ranger

__all__ = [
    "INPUT_FORMATS",
    "READERS",
    "TORCH_DATA_GLOBALS",
    "AnnDataDataset",
    "CellRangerDataset",
    "CellRangerSamplesDataset",
    "CiteSeqFilesDataset",
    "CiteSeqH5adDataset",
    "CiteSeqH5muDataset",
    "CiteSeqInputDataset",
    "ExternalEmbedding",
    "ExternalEmbeddingsDataset",
    "JSONDataset",
    "MatplotlibDataset",
    "ModelDataset",
    "MuDataDataset",
    "ParquetDataset",
    "SimulatedCiteSeqDataset",
    "TextDataset",
    "_allowed_model_class",
    "_temporary_sibling",
    "atomic_path",
    "file_sha256",
    "input_format",
    "read_cell_ranger",
    "read_h5ad_backed",
    "recover_interrupted_writes",
]
