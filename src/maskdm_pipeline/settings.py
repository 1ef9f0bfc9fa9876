"""Project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

from kedro.config import OmegaConfigLoader

from maskdm_pipeline.hooks import ValidateParametersHook

# Parameter validation runs before any node: an unknown or invalid value is refused up front,
# naming the parameter, instead of failing an hour into training.
HOOKS = (ValidateParametersHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (smoke, celeba64, ...) overrides single keys, not whole top-level blocks.
    "merge_strategy": {"parameters": "soft"},
}
