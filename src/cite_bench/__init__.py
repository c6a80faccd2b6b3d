"""cite-bench: a Kedro project that benchmarks multimodal integration of CITE-seq data."""

__version__ = "0.1"
