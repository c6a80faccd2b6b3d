"""The benchmark matrix: several datasets' runs on one Dask cluster, one combined table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cite_bench.matrix import combine, format_matrix_table, plan, scored_methods_only
from cite_bench.methods import METHODS
from cite_bench.seeds import split_by_seed
from tests.builders import summary_table as _summary_table

from .conftest import QUICK_CLI, kedro_cli
from .mlflow_helpers import runs_of


def _table(offset: float) -> pd.DataFrame:
    """Two seeds of methods a, b, c and a scored control, plus a control never scored."""
    table = _summary_table((0, 1))
    table[["value", "scaled"]] += offset
    unscored = table[table["method"] == "random_gaussian"].assign(
        method="shuffled_cells", value=np.nan, scaled=np.nan, note="skipped: controls are off"
    )
    return pd.concat([table, unscored], ignore_index=True)


def test_tables_combine_with_the_dataset_first_and_unscored_methods_leave_the_summary():
    combined = combine({"demo": _table(0.0), "starter": _table(0.1)})
    assert list(combined.columns[:2]) == ["dataset", "method"]
    assert set(combined["dataset"]) == {"demo", "starter"}
    assert len(combined) == 2 * len(_table(0.0))
    scored = scored_methods_only(combined)
    assert "shuffled_cells" not in set(scored["method"])  # only says why it was skipped
    text = format_matrix_table(scored, "scaled")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| method | role | demo | starter |"
    # b is best (0.8 and 0.82 over seeds 0 and 1); the control is last whatever its score.
    assert lines[1] == "| b | external | 0.810 ± 0.014 | 0.910 ± 0.014 |"
    assert lines[-1].startswith("| random_gaussian | control |")


def test_two_environments_naming_one_dataset_are_refused_before_any_run(project):
    (project / "conf" / "copy").mkdir()
    with pytest.raises(ValueError, match=r"name the same dataset \['demo'\]"):
        plan(project, ["base", "copy"], {})


@pytest.mark.slow
def test_the_matrix_command_runs_demo_and_starter_with_two_seeds(project, starter_dir):
    """`kedro matrix` on the demo and the real starter data, two seeds each, on one
    LocalCluster: one combined table and figure, one MLflow parent run per dataset. Each
    dataset's run (`kedro run --params "seeds=0 1"`) trains every model once per seed, and its
    tables report mean ± SD, non-zero for the trained models."""
    # The starter environment names its files (--params would name them for both datasets).
    starter = project / "conf/starter/globals.yml"
    starter.write_text(
        starter.read_text().replace("../shared/data/bmmc_cite_starter", str(starter_dir))
    )
    result = kedro_cli(
        project,
        "matrix",
        "--env",
        "base",
        "--env",
        "starter",
        "--seeds",
        "0 1",
        "--params",
        QUICK_CLI,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    output = project / "data/08_reporting/matrix"
    combined = pd.read_parquet(output / "matrix.parquet")
    assert set(combined["dataset"]) == {"demo", "bmmc_cite_starter"}
    trained = combined[combined["role"] != "control"]
    assert trained.groupby("dataset")["seed"].unique().map(sorted).map(list).tolist() == [
        [0, 1],
        [0, 1],
    ]
    assert (output / "matrix_summary.png").stat().st_size > 10_000
    assert "| totalvi | integrated |" in (output / "matrix.md").read_text()
    _, parents, children = runs_of(f"sqlite:///{project / 'mlflow.db'}")
    assert sorted(parent.data.tags["dataset"] for parent in parents) == [
        "bmmc_cite_starter",
        "demo",
    ]
    assert all(run.info.status == "FINISHED" for run in [*parents, *children])
    check_seeds_in_a_run(project / "data", "demo", (0, 1))


def check_seeds_in_a_run(data: Path, dataset: str, seeds: tuple[int, ...]) -> None:
    """Every trained model once per seed, in one embedding file and one model folder per seed;
    mean ± SD in the markdown; scores that differ between seeds."""
    table = pd.read_parquet(data / f"08_reporting/{dataset}/metrics.parquet")
    spread = table.groupby(["method", "metric"])["value"].std()
    for model in ("mofa", "totalvi", "multigrate"):
        assert spread.loc[(model, "overall")] > 0, f"{model}: identical scores over seeds"
        embedding = pd.read_parquet(data / f"07_model_output/{dataset}/{model}_embedding.parquet")
        assert list(split_by_seed(embedding)) == list(seeds)
        saved = sorted(path.name for path in (data / f"06_models/{dataset}/{model}").glob("seed_*"))
        assert saved == [f"seed_{seed}" for seed in seeds]
    markdown = (data / f"08_reporting/{dataset}/metrics.md").read_text()
    assert f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}." in markdown
    integrated = [name for name, method in METHODS.items() if method.role == "integrated"]
    n_metrics = table["metric"].nunique()
    assert markdown.count(" ± ") >= 2 * len(integrated) * (n_metrics - 3)
    summary = json.loads(
        (data / f"07_model_output/{dataset}/mofa_training_summary.json").read_text()
    )
    assert summary["seeds"] == list(seeds) and len(summary["runs"]) == len(seeds)
