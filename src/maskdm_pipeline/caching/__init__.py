"""The cache of ``kedro run`` (issue 14; docs/caching.md): every output carries a
fingerprint of what determines it, and a part of the pipeline whose outputs are current is
skipped with a ``<stage>: up to date (fingerprint ..., written ...), skipped`` line.

- :mod:`~maskdm_pipeline.caching.session`: ``CachingSession`` (``settings.SESSION_CLASS``) and the
  runner wrapper that decides part by part;
- :mod:`~maskdm_pipeline.caching.units`: the parts of a pipeline and their stages;
- :mod:`~maskdm_pipeline.caching.judge`: current or not, and why;
- :mod:`~maskdm_pipeline.caching.records`: the fingerprint records beside the outputs (their
  format) and the content identity of a dataset;
- the rule itself, shared with every other cache key of the project: :mod:`maskdm_pipeline.fingerprint`.

Public API for other hooks (MLflow), in the process that runs ``kedro run``:

- :func:`read_fingerprints` ``(catalog, names=None) -> {dataset name: record}``: the records on
  disk now (after a run: the ones of every current output, whether it ran or was skipped);
- :func:`run_decisions` ``() -> [{...}, ...]``: what the last ``kedro run`` of this process
  decided for each part.

Imports stay light here: ``settings.py`` imports the session for every ``kedro`` command.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["read_fingerprints", "run_decisions"]


def read_fingerprints(catalog: Any, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{dataset name: fingerprint record}`` for every dataset of ``catalog`` (or of ``names``)
    that has a readable record beside it; the record format is in
    :mod:`maskdm_pipeline.caching.records` (``fingerprint``, ``written``, ``params``, ``inputs``,
    ``content``, ...). Datasets without a record, or with an unreadable one, are left out."""
    from maskdm_pipeline.caching import records

    found: dict[str, dict[str, Any]] = {}
    for name in list(names if names is not None else catalog.keys()):
        if name == "parameters" or name.startswith("params:"):
            continue
        dataset = catalog.get(name)
        path = records.dataset_path(dataset) if dataset is not None else None
        if path is None:
            continue
        try:
            record = records.read_record(path)
        except records.RecordUnreadable:
            continue
        if record is not None:
            found[name] = record
    return found


def run_decisions() -> list[dict[str, Any]]:
    """The parts of the last ``kedro run`` of this process, in the order they were decided:
    ``{"stage", "part", "nodes", "outputs", "fingerprint", "reasons" (why it had to run; empty:
    skipped as up to date), "ran" (it ran to the end in this run and its records were written),
    "written" (its records' time, ISO 8601)}``. Empty before any run."""
    from maskdm_pipeline.caching.session import RUNS

    if not RUNS:
        return []
    return [{"stage": d.part.stage, "part": d.part.label, "nodes": [n.name for n in d.part.nodes],
             "outputs": list(d.part.outputs), "fingerprint": d.fingerprint, "ran": d.ran,
             "reasons": list(d.reasons), "written": d.written} for d in RUNS[-1]]
