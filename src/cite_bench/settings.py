"""Project settings (https://docs.kedro.org/en/stable/kedro_project_setup/settings.html)."""

from cite_bench.config_loader import ConfigLoader
from cite_bench.locks import RunLockHook
from cite_bench.parameters import ParameterValidationHook
from cite_bench.tracking import MlflowTrackingHook

# RunLockHook takes the dataset's run lock before the other hooks start anything (it wraps
# before_pipeline_run) and releases it after them.
HOOKS = (RunLockHook(), ParameterValidationHook(), MlflowTrackingHook())

# Tracking is this project's own hook: keep kedro-mlflow's off if it happens to be installed.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

# Kedro's loader, with the dataset named by --params dataset=... or by the input file.
CONFIG_LOADER_CLASS = ConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment's parameters refine base's block by block instead of replacing them.
    "merge_strategy": {"parameters": "soft", "globals": "soft", "tracking": "soft"},
    "config_patterns": {"tracking": ["tracking*", "tracking*/**"]},
}
