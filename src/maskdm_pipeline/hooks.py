"""Project hooks: refuse bad parameters before any node runs."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl

from maskdm_pipeline.validation import validate_parameters

logger = logging.getLogger(__name__)


class ValidateParametersHook:
    """Checks the merged parameters (conf + ``--params``) against the schema in
    :mod:`maskdm_pipeline.validation` and stops the run with a message naming the parameter."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        params = catalog.load("parameters")
        runtime = run_params.get("runtime_params") or {}
        validate_parameters(params, runtime_params=runtime)
