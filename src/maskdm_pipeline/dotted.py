"""Dotted names (``pretrain.mask.ratio``): the one flattener of nested parameter trees, shared by
the parameter schema's messages, the cache's keys and MLflow's parameters (pydantic and the
standard library; no Kedro).

It stands on the neutral floor, apart from the MLflow code that uses it most, so that an edit of
the tracking code does not change the code identity of every stage (docs/caching.md): the
schema and the fingerprint import this module, not the tracking package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["flatten"]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the dotted names of ``--params``, of the parameter
    messages and of MLflow. A parameter block Kedro has turned into a model flattens as the
    mapping it was given as; keys that already contain dots are kept as is.

    Our own ten lines, not ``pandas.json_normalize``: that one goes through a DataFrame, so null
    comes back as NaN and numbers as numpy scalars.
    """
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json", exclude_unset=True)
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_unset=True)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
