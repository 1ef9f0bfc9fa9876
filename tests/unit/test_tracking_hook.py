"""What the MLflow hook learns from the run, without a store: on several nodes, which node opens
the run (the node rank comes as data, from a training node's accounting output or from the
error of a failed training), and what the cache did (from the records beside the outputs)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from maskdm_pipeline.tracking.mlflow_hook import MlflowTrackingHook
from maskdm_pipeline.training.distributed import NODE_RANK, _ranked, node_rank_of


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowTrackingHook, list[tuple[Any, ...]]]:
    """A hook of a two-node job after ``before_pipeline_run``, and the runs it opens."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "0")
    hook, opened = MlflowTrackingHook(), []
    hook._nnodes = 2
    monkeypatch.setattr(hook, "_start", lambda *pending: opened.append(pending))
    hook.before_pipeline_run(run_params={"pipeline_names": ["pretrain"]}, pipeline=None, catalog=None)
    assert hook._pending is not None and not opened  # deferred until this node knows its rank
    return hook, opened


def _node(*outputs: str) -> SimpleNamespace:
    return SimpleNamespace(outputs=list(outputs))


def _accounting(rank: int) -> dict[str, Any]:
    return {"stage": "pretrain", "stats": {"wall_time_s": 1.0}, NODE_RANK: rank}


def test_the_node_with_rank_zero_opens_the_run_once_its_training_node_says_so(deferred) -> None:
    hook, opened = deferred
    hook.after_node_run(node=_node("train"), outputs={"train": {"images": None}})
    assert hook._pending is not None and not opened  # no training node yet
    hook.after_node_run(node=_node("pretrained", "pretrain_accounting"),
                        outputs={"pretrained": {}, "pretrain_accounting": _accounting(0)})
    assert len(opened) == 1 and hook._pending is None
    hook.after_node_run(node=_node("finetune_accounting"), outputs={"finetune_accounting": _accounting(0)})
    assert len(opened) == 1  # once


def test_another_node_never_opens_one(deferred, caplog: pytest.LogCaptureFixture) -> None:
    hook, opened = deferred
    with caplog.at_level(logging.INFO):
        hook.after_node_run(node=_node("pretrain_accounting"), outputs={"pretrain_accounting": _accounting(1)})
        hook.after_pipeline_run(pipeline=SimpleNamespace(all_outputs=lambda: {"pretrain_accounting"}))
    assert not opened and hook._pending is None
    assert "This node has node rank 1" in caplog.text


def _failed_training(rank: int) -> BaseException:
    """What a training node raises when the launch fails with this node ranked ``rank`` (-1:
    before the rendezvous): the stage's one-line error, raised ``from None`` over the engine's
    error, itself raised from the launcher's."""
    try:
        try:
            try:
                with _ranked(SimpleNamespace(value=rank)):
                    raise RuntimeError("the workers failed")
            except RuntimeError as exc:
                raise ConnectionError("pretrain: lost contact with another node") from exc
        except ConnectionError as exc:
            raise ValueError(str(exc)) from None
    except ValueError as error:
        return error


def test_a_failed_training_carries_the_node_rank_once_the_nodes_were_ranked() -> None:
    assert node_rank_of(_failed_training(0)) == 0 and node_rank_of(_failed_training(1)) == 1
    assert node_rank_of(_failed_training(-1)) is None  # the rendezvous never completed
    assert node_rank_of(KeyError("no training")) is None


def test_a_failed_multi_node_run_is_tracked_on_the_node_with_rank_zero(deferred) -> None:
    hook, opened = deferred
    hook.on_pipeline_error(error=_failed_training(0), pipeline=SimpleNamespace(all_outputs=lambda: set()))
    assert len(opened) == 1 and hook._pending is None


def test_a_run_that_failed_before_the_rendezvous_is_not_tracked(deferred) -> None:
    hook, opened = deferred
    hook.on_pipeline_error(error=_failed_training(-1), pipeline=SimpleNamespace(all_outputs=lambda: set()))
    assert not opened and hook._pending is None


class _NoMlflow:
    """A meta-path finder that hides mlflow, as on a machine where it is not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "mlflow" or name.startswith("mlflow."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_without_mlflow_the_run_says_so_in_one_line_and_goes_on(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import sys

    for name in [n for n in sys.modules if n == "mlflow" or n.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoMlflow(), *sys.meta_path])
    hook = MlflowTrackingHook()
    with caplog.at_level(logging.INFO):
        hook.before_pipeline_run(run_params={"pipeline_names": ["pretrain"]}, pipeline=None, catalog=None)
        hook.after_node_run(node=_node("pretrain_accounting"), outputs={"pretrain_accounting": _accounting(0)})
        hook.after_pipeline_run(pipeline=SimpleNamespace(all_outputs=lambda: {"pretrain_accounting"}))
    lines = [r.getMessage() for r in caplog.records if "mlflow" in r.getMessage().lower()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("MLflow cannot be imported (No module named 'mlflow'): this run is not tracked.")
    assert hook._run_id is None and hook._client is None
