"""Wiring of the data_processing pipeline."""

from kedro.pipeline import Node, Pipeline

from cite_bench.artifacts import CELL_METADATA, MUDATA, RAW_INPUT

from .nodes import (
    assemble_mudata,
    extract_cell_metadata,
    preprocess_adt,
    preprocess_rna,
    subsample_cells,
    validate_input,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                validate_input,
                inputs=[RAW_INPUT, "params:columns", "params:data_processing"],
                outputs="paired_modalities",
                name="validate_input",
            ),
            Node(
                subsample_cells,
                inputs=["paired_modalities", "params:data_processing", "params:columns"],
                outputs="subsampled_modalities",
                name="subsample_cells",
            ),
            Node(
                preprocess_rna,
                inputs=["subsampled_modalities", "params:data_processing", "params:columns"],
                outputs="rna_preprocessed",
                name="preprocess_rna",
            ),
            Node(
                preprocess_adt,
                inputs=["subsampled_modalities", "params:data_processing"],
                outputs="adt_preprocessed",
                name="preprocess_adt",
            ),
            Node(
                assemble_mudata,
                inputs=["rna_preprocessed", "adt_preprocessed", "subsampled_modalities"],
                outputs=MUDATA,
                name="assemble_mudata",
            ),
            Node(
                extract_cell_metadata,
                inputs=MUDATA,
                outputs=CELL_METADATA,
                name="extract_cell_metadata",
            ),
        ]
    )
