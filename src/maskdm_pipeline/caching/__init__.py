"""The cache of ``kedro run`` (issue 14; docs/caching.md): every output carries a
fingerprint of what determines it, and a part of the pipeline whose outputs are current is
skipped with a ``<stage>: up to date (fingerprint ..., written ...), skipped`` line.

- :mod:`~maskdm_pipeline.caching.session`: ``CachingSession`` (``settings.SESSION_CLASS``) and the
  run that decides part by part;
- :mod:`~maskdm_pipeline.caching.kedro_runner`: how that run gets into Kedro's runner (the one
  place that touches Kedro's private runner methods);
- :mod:`~maskdm_pipeline.caching.report`: what the run logs;
- :mod:`~maskdm_pipeline.caching.units`: the parts of a pipeline and their stages;
- :mod:`~maskdm_pipeline.caching.judge`: current or not, and why;
- :mod:`~maskdm_pipeline.caching.records`: the fingerprint records beside the outputs (their
  format) and the content identity of a dataset;
- the rule itself, shared with every other cache key of the project: :mod:`maskdm_pipeline.fingerprint`.

Public API for other hooks (MLflow): :func:`read_fingerprints` ``(catalog, names=None) ->
{dataset name: record}``, the records on disk now (after a run: the ones of every current output,
whether it ran or was skipped; a record's ``session_id`` says which ``kedro run`` wrote it).

Imports stay light here: ``settings.py`` imports the session for every ``kedro`` command.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["read_fingerprints"]


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

