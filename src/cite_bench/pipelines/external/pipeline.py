"""The external embeddings' scoring and the tables and figures rebuilt with them.

The nodes are evaluation's (``evaluation/nodes.py``): an external embedding is scored exactly as
a registered method's. This package only makes ``--pipeline external`` a pipeline of its own.
"""

from kedro.pipeline import Pipeline

from cite_bench.pipelines.evaluation.pipeline import create_external_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return create_external_pipeline()
