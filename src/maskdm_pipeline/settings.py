"""Project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

import warnings

from kedro.config import OmegaConfigLoader

from maskdm_pipeline.hooks import MlflowResultsHook, ValidateParametersHook

# Third-party deprecation chatter that users can do nothing about (kedro-mlflow 2.0 on Kedro 1.7).
warnings.filterwarnings("ignore", message=r".*register_new_resolver\(\) is deprecated.*")
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")

# Parameter validation runs before any node: an unknown or invalid value is refused up front,
# naming the parameter, instead of failing an hour into training.
HOOKS = (ValidateParametersHook(), MlflowResultsHook())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (smoke, celeba64, ...) overrides single keys, not whole top-level blocks.
    "merge_strategy": {"parameters": "soft"},
}
