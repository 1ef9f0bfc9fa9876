"""Project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

import warnings

from kedro.config import OmegaConfigLoader

from maskdm_pipeline.hooks import CheckpointSlotHook, MlflowTrackingHook, ValidateParametersHook

# Third-party chatter that users can do nothing about (MLflow's pyfunc module on import).
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")

# Parameter validation runs before any node (and before an MLflow run is opened): an unknown or
# invalid value is refused up front, naming the parameter, instead of failing an hour in.
HOOKS = (ValidateParametersHook(), CheckpointSlotHook(), MlflowTrackingHook())

# kedro-mlflow's hooks stop a run when the store is locked or unreachable, so the project logs
# through its own best-effort MlflowTrackingHook instead and does not depend on the plugin.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")  # if a user installs it anyway

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (smoke, celeba64, ...) overrides single keys, not whole top-level blocks.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
}
