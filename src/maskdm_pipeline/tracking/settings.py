"""The schema of ``conf/*/mlflow.yml``: every setting the tracking hook reads, typed, with its
default, validated once when the context is created.

A misspelt key (``tracking.log_model``) or a value of the wrong kind stops the command before
anything runs, in one line that names the setting and the closest valid one (the rule every name
a user types follows, issue 27): an ignored key would silently track with the default. Written
as a pydantic schema, as the run parameters are (:mod:`maskdm_pipeline.params`), since the file
is the project's own (the kedro-mlflow plugin's ``mlflow.yml`` is a different format, which this
project does not use: docs/reliability.md "MLflow").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError, model_validator

from maskdm_pipeline.dotted import flatten
from maskdm_pipeline.params import ParameterError, closest

__all__ = ["MlflowSettings", "read_settings"]

FILE = "conf/*/mlflow.yml"


class _Section(BaseModel):
    """A section of mlflow.yml: no keys but its own; a key left empty in YAML (``name:``) takes
    its default, as an absent one does."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Server(_Section):
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"  # relative sqlite paths: to the project root


class DisableTracking(_Section):
    pipelines: tuple[str, ...] = ()  # pipeline names whose runs are not tracked


class Experiment(_Section):
    name: str = "maskdm_pipeline"
    artifact_location: str = "mlruns"  # a folder (relative: to the project root) or a URI


class Tracking(_Section):
    disable_tracking: DisableTracking = DisableTracking()
    experiment: Experiment = Experiment()
    log_models: StrictBool = True  # each trained model as an MLflow logged model of its run


class MlflowSettings(_Section):
    """``conf/*/mlflow.yml`` as the hook reads it (conf/base/mlflow.yml documents each key)."""

    server: Server = Server()
    tracking: Tracking = Tracking()


def read_settings(config: Mapping[str, Any] | None) -> MlflowSettings:
    """The validated settings of an mlflow.yml tree (None or empty: every default).

    Raises:
        ParameterError: an unknown key or a value of the wrong kind, every problem in one message
            that names the file, the dotted setting and the closest valid name (exit status 2).
    """
    try:
        return MlflowSettings.model_validate(dict(config or {}))
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
    raise ParameterError(f"{FILE}: " + "; ".join(problems) + ". Nothing was run.")


def _names() -> list[str]:
    """Every dotted setting name, ``server.mlflow_tracking_uri`` ... ``tracking.log_models``."""
    return list(flatten(MlflowSettings().model_dump()))


def _problem(error: Mapping[str, Any]) -> str:
    name = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = closest(name, _names())
        hint = f"did you mean {close[0]}?" if close else "the valid ones: " + ", ".join(_names())
        return f"{name} is not a setting; {hint}"
    if error["type"] == "bool_type":
        return f"{name} is {error.get('input')!r}; use true or false"
    return f"{name} is {error.get('input')!r}: {error['msg']}"
