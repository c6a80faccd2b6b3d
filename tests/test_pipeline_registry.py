"""Every registered pipeline runs on its own: what it reads is in the catalog, so
`kedro run --pipeline <name>` never stops for an input only another pipeline makes in memory."""

from __future__ import annotations

from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from .conftest import PROJECT_ROOT


def test_every_registered_pipelines_inputs_are_in_the_catalog():
    bootstrap_project(PROJECT_ROOT)
    with KedroSession.create(project_path=PROJECT_ROOT) as session:
        catalog = session.load_context().catalog
        unread = {
            name: sorted(
                dataset
                for dataset in pipeline.inputs()
                if not dataset.startswith("params:")
                and dataset not in catalog
                and not catalog.config_resolver.match_dataset_pattern(dataset)
            )
            for name, pipeline in pipelines.items()
        }
    assert {"data_processing", "modelling", "evaluation", "external"} <= set(unread)
    assert {name: inputs for name, inputs in unread.items() if inputs} == {}
