"""What the cache logs during a run (caching/report.py), in process on hand-made decisions: the
stage lines in pipeline order however the waves interleave the stages, and the warning about
several stale inputs as short lines. The CLI scenarios are in tests/pipelines/test_caching.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from kedro.pipeline import node, pipeline

from maskdm_pipeline.caching.judge import Decision
from maskdm_pipeline.caching.report import Report, stale_warning
from maskdm_pipeline.caching.units import Part, split_parts, stage_order

WRITTEN = "2026-01-01T12:00:00+00:00"


def _copy(*data: Any) -> Any:
    return data[0]


@pytest.fixture
def parts() -> dict[str, Part]:
    """Stages ``prep`` (``raw`` -> ``p1``, then ``p1`` -> ``p2``), ``train`` (``fit``: ``p1`` -> ``t``)
    and ``eval`` (``p1`` -> ``e1`` early, ``t`` -> ``e2``), every dataset a file; as in the real
    DAG (preprocess's fd_clf reference, evaluate's Inception reference), the waves decide
    ``train`` before the last part of ``prep``, and a part of ``eval`` before ``train``."""
    pipe = pipeline([node(_copy, "raw", "p1", name="p1"), node(_copy, "p1", "e1", name="e1"),
                     node(_copy, "p1", "t", name="fit"), node(_copy, "p1", "p2", name="p2"),
                     node(_copy, "t", "e2", name="e2")])
    stage_of = {"p1": "prep", "p2": "prep", "fit": "train", "e1": "eval", "e2": "eval"}
    found = split_parts(pipe, lambda name: True, stage_of)
    assert [p.nodes[0].name for p in found] == ["p1", "e1", "fit", "p2", "e2"]
    return {p.nodes[0].name: p for p in found}


def _decide(report: Report, part: Part, *reasons: str, stale: dict[str, tuple[str, str]] | None = None) -> None:
    report.decided(Decision(part, list(reasons), {}, "f" * 64, written=None if reasons else WRITTEN), stale or {})


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "maskdm_pipeline.caching"]


def test_stages_come_in_pipeline_order(parts: dict[str, Part]) -> None:
    assert stage_order(list(parts.values())) == ["prep", "train", "eval"]


def test_up_to_date_lines_come_in_pipeline_order_whatever_the_waves(
        parts: dict[str, Part], caplog: pytest.LogCaptureFixture) -> None:
    report = Report(list(parts.values()), stage_order(list(parts.values())))
    with caplog.at_level(logging.INFO, logger="maskdm_pipeline.caching"):
        for name in ("p1", "e1", "fit", "p2", "e2"):  # the waves: p1 | e1 fit p2 | e2
            _decide(report, parts[name])
        report.summary([])
    assert [line.split(":")[0] for line in _lines(caplog)] == ["prep", "train", "eval", "Cache"]
    assert _lines(caplog)[0].startswith("prep: up to date (fingerprint ")


def test_a_stage_that_runs_lets_the_stages_after_it_come_and_names_its_current_parts(
        parts: dict[str, Part], caplog: pytest.LogCaptureFixture) -> None:
    report = Report(list(parts.values()), stage_order(list(parts.values())))
    with caplog.at_level(logging.INFO, logger="maskdm_pipeline.caching"):
        for name in ("p1", "e1", "fit", "p2"):
            _decide(report, parts[name])
        _decide(report, parts["e2"], "input t changed")
    lines = _lines(caplog)
    assert [line.split(":")[0] for line in lines] == ["prep", "train", "eval [e1]", "eval [e2]"]
    assert lines[2].startswith("eval [e1]: up to date (fingerprint ffffff, written ")
    assert lines[3] == "eval [e2]: runs (input t changed)"


def test_a_failed_run_still_names_the_stages_found_current(
        parts: dict[str, Part], caplog: pytest.LogCaptureFixture) -> None:
    """``train`` is current but waits for ``prep``, whose last part is never decided."""
    report = Report(list(parts.values()), stage_order(list(parts.values())))
    with caplog.at_level(logging.INFO, logger="maskdm_pipeline.caching"):
        for name in ("p1", "e1", "fit"):
            _decide(report, parts[name])
        assert not _lines(caplog)
        report.stopped()
    assert [line.split(":")[0] for line in _lines(caplog)] == ["train"]


def test_one_stale_input_is_one_line() -> None:
    assert stale_warning("sample [maskdm]", {"finetuned": ("finetune", "parameters changed: finetune.lr 1 -> 2")}) == [
        "sample [maskdm]: input finetuned (finetune would rerun: parameters changed: finetune.lr 1 -> 2) is out of "
        "date, and finetune is not part of this run: using it as it is"]


def test_several_stale_inputs_are_a_line_each(parts: dict[str, Part], caplog: pytest.LogCaptureFixture) -> None:
    stale = {"maskdm_samples": ("sample", "input finetuned changed"),
             "feature_classifier": ("preprocess", "parameters changed: preprocess.seed 0 -> 1"),
             "fd_clf_reference": ("preprocess", "input feature_classifier changed")}
    assert stale_warning("evaluate [maskdm]", stale) == [
        "evaluate [maskdm]: 3 inputs are out of date, and preprocess and sample are not part of this run: "
        "using them as they are",
        "evaluate [maskdm]: input maskdm_samples (sample would rerun: input finetuned changed)",
        "evaluate [maskdm]: input feature_classifier (preprocess would rerun: parameters changed: "
        "preprocess.seed 0 -> 1)",
        "evaluate [maskdm]: input fd_clf_reference (preprocess would rerun: input feature_classifier changed)"]
    report = Report(list(parts.values()), stage_order(list(parts.values())))
    with caplog.at_level(logging.WARNING, logger="maskdm_pipeline.caching"):
        _decide(report, parts["e2"], "input t changed", stale=stale)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all("\n" not in line for line in warnings)
