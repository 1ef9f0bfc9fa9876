"""Project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

import warnings

from omegaconf.resolvers import oc

from maskdm_pipeline.caching.session import CachingSession
from maskdm_pipeline.configuration import ProjectConfigLoader
from maskdm_pipeline.console import one_line_user_errors, plain_logs_unless_terminal
from maskdm_pipeline.hooks import CheckpointSlotHook, DeviceCheckHook, TemporaryFilesHook
from maskdm_pipeline.project import ProjectContext, use_project_logging
from maskdm_pipeline.tracking.mlflow_hook import MlflowTrackingHook

# conf/logging.yml (and its log file at the project root) also when Kedro starts in a sub-folder.
use_project_logging()
# Rich log layout on a terminal; one plain, full-width line per record in a file or pipe.
plain_logs_unless_terminal()
# An error written for the user (a click.ClickException, e.g. a damaged checkpoint) ends the
# command with its one line, also when it reaches the top wrapped in Kedro's DatasetError.
one_line_user_errors()

# Third-party chatter that users can do nothing about (MLflow's pyfunc module on import).
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")
# OmegaConf 2.4 deprecates register_new_resolver(), which Kedro's OmegaConfigLoader calls for its
# own `globals` and `runtime_params` resolvers each time a loader is made (two or more warnings per
# command). The call is Kedro's: which OmegaConf function is right depends on the OmegaConf version
# (before 2.4 `register_resolver` is the legacy, string-only API), so the project does not
# override it; only this warning, raised from that Kedro module, is silenced.
KEDRO_RESOLVER_DEPRECATION = {"message": r"register_new_resolver\(\) is deprecated", "category": UserWarning,
                               "module": r"kedro\.config\.omegaconf_config"}
warnings.filterwarnings("ignore", **KEDRO_RESOLVER_DEPRECATION)

HOOKS = (DeviceCheckHook(), TemporaryFilesHook(), CheckpointSlotHook(), MlflowTrackingHook())

# kedro-mlflow's hooks stop a run when the store is locked or unreachable, so the project logs
# through its own best-effort MlflowTrackingHook instead and does not depend on the plugin.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")  # if a user installs it anyway

# `kedro run` with the cache (docs/caching.md "How it is built"): a stage whose outputs are
# current is skipped; the session hands the chosen runner a wrapper that decides part by part.
SESSION_CLASS = CachingSession

# The parameters are validated once, as the context is made, before any hook or node (and before
# an MLflow run is opened): an unknown or invalid value is refused up front, naming the parameter,
# instead of failing an hour in. Parameters that name files (params.ProjectPath) are relative to
# the project root, like the catalog's file paths, wherever Kedro is started.
CONTEXT_CLASS = ProjectContext

# Kedro's OmegaConfigLoader; a mistake in conf/ (a file that is not YAML, an environment without a
# folder, a key set twice) ends in one line that names the file (configuration.ProjectConfigLoader).
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (smoke, celeba64, ...) overrides single keys, not whole top-level blocks.
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # `${oc.env:NAME,default}` in conf/ (Kedro enables it for credentials only): where a data set
    # lies differs between machines (conf/fashion/catalog.yml: FASHION_MNIST_DIR), as Kedro's
    # configuration docs suggest, rather than an environment per machine.
    "custom_resolvers": {"oc.env": oc.env},
}
