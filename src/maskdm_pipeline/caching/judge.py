"""Whether a part of the pipeline is current, and why not.

A part is current when every file it writes exists, has its fingerprint record beside it, is as
that record describes it, and the record's fingerprint equals the one the part would get now
from its parameters, the content of its inputs as they are on disk, the files it reads and the
code it runs (:meth:`Judge.code`); and when no input blocks it (an unfinished run's resume
checkpoint). An input's content is the one its writer recorded, so a part whose rerun wrote the
same content as before changes nothing downstream (early cut-off).

What the judge asks of the nodes and the datasets, without knowing any of them:

- a node function may declare the files it reads besides its catalog inputs
  (:func:`maskdm_pipeline.fingerprint.reads_files`; the FID weights): their content hashes go into
  the fingerprint;
- an input dataset may define ``blocks_current() -> str | None``: why the part that reads it
  cannot be current (``CheckpointSlotDataset``: its file exists, an unfinished run);
- and ``content_identity()`` (:mod:`~maskdm_pipeline.caching.records`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskdm_pipeline.caching import records
from maskdm_pipeline.caching.units import PARAMS_PREFIX, Part
from maskdm_pipeline.codegraph import Module
from maskdm_pipeline.fingerprint import code_identity, file_digest, files_read, fingerprint, key_document
from maskdm_pipeline.listing import shown

_SHOWN = 4  # changed parameters, files or libraries named per line


@dataclass
class Decision:
    """What the cache decided for one part, and why."""

    part: Part
    reasons: list[str]  # empty: current
    document: dict[str, Any]
    fingerprint: str
    written: str | None = None  # the newest of its records, when current
    stale_inputs: list[str] = field(default_factory=list)
    params_changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (recorded, now)

    @property
    def current(self) -> bool:
        return not self.reasons


def _dotted(tree: Mapping[str, Any], name: str) -> Any:
    value: Any = tree
    for key in name.split("."):
        value = value[key]
    return value


class Judge:
    """The decisions of one ``kedro run``: identities are computed once per run and updated when
    a part has run.

    Args:
        catalog: the run's catalog.
        params: the validated parameter tree as plain values (``Params.model_dump(mode="json")``).
        writers: dataset name -> the part (of the whole DAG) that writes it.
        modules: the package's modules the code identities are read from (``codegraph``); by
            default the package as the interpreter imports it.
    """

    def __init__(self, catalog: Any, params: Mapping[str, Any], writers: Mapping[str, Part],
                 modules: Mapping[str, Module] | None = None):
        self.catalog = catalog
        self.params = params
        self.writers = writers
        self.modules = modules
        self._identities: dict[str, str] = {}
        self._digests: dict[tuple[Path, int, int], str] = {}
        self._code: dict[tuple[str, ...], tuple[dict[str, str], dict[str, str]]] = {}

    # ------------------------------------------------------------------ what goes into the key
    def _dataset(self, name: str) -> Any:
        return self.catalog.get(name, fallback_to_runtime_pattern=True)

    def identity(self, name: str) -> str:
        """The content identity of input ``name`` as it is on disk now."""
        if name not in self._identities:
            dataset = self._dataset(name)
            path = records.dataset_path(dataset)
            if name not in self.writers or path is None:
                self._identities[name] = records.raw_identity(dataset, path)
            else:
                try:
                    record = records.read_record(path)
                except records.RecordUnreadable:
                    record = None
                if record is not None and path.exists() and self._unchanged(dataset, path, record):
                    self._identities[name] = record["content"]
                else:
                    self._identities[name] = records.content(dataset, path)
        return self._identities[name]

    def _files(self, part: Part) -> dict[str, str]:
        files: dict[str, str] = {}
        for node in part.nodes:
            for label, path in files_read(node.func, self.params).items():
                files[label] = self._file_digest(path)
        return files

    def _file_digest(self, path: Path) -> str:
        try:
            info = path.stat()
        except OSError:
            return f"absent:{path}"
        key = (path, info.st_size, info.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = file_digest(path)
        return self._digests[key]

    def code(self, part: Part) -> tuple[dict[str, str], dict[str, str]]:
        """The code identity of ``part`` (``code``, ``libraries``): what its nodes run
        (:meth:`Part.modules`) and the classes of the datasets it reads and writes (their
        ``load`` and ``save`` run for it), with everything they import."""
        datasets = (type(self._dataset(name)).__module__ for name in (*part.inputs, *part.outputs))
        roots = tuple(sorted({*part.modules(), *datasets}))
        if roots not in self._code:
            self._code[roots] = code_identity(roots, self.modules)
        return self._code[roots]

    def key(self, part: Part) -> tuple[dict[str, Any], str]:
        """The key document of ``part`` now, and its fingerprint."""
        blocks = {name[len(PARAMS_PREFIX):]: _dotted(self.params, name[len(PARAMS_PREFIX):]) for name in part.params}
        inputs = {name: self.identity(name) for name in part.inputs if not records.exempt(self._dataset(name))}
        code, libraries = self.code(part)
        document = key_document(part.what(), blocks, inputs, self._files(part), code, libraries)
        return document, fingerprint(document)

    # ------------------------------------------------------------------ the decision
    def _unchanged(self, dataset: Any, path: Path, record: Mapping[str, Any]) -> bool:
        """Whether the output is what its record describes; a matching content with a new stamp
        (a copy that did not keep modification times) refreshes the record's stamp, the one write
        of a decision, as ``git status`` refreshes its index: later runs need not hash it again."""
        now = records.stamp(dataset, path)
        if now == record["stamp"]:
            return True
        if records.content(dataset, path) != record["content"]:
            return False
        records.write_record(path, {**record, "stamp": now})
        return True

    def decide(self, part: Part, forced: str | None = None) -> Decision:
        """Judge ``part`` against what is on disk; ``forced`` (a ``cache.rerun`` value) reruns it."""
        document, key = self.key(part)
        reasons = [f"cache.rerun={forced}"] if forced else []
        for name in part.inputs:
            blocks = getattr(self._dataset(name), "blocks_current", None)
            if callable(blocks) and (why := blocks()):
                reasons.append(why)
        missing, unrecorded, written, changed = [], [], [], {}
        for name in part.outputs:
            path = records.dataset_path(self._dataset(name))
            if path is None:
                reasons.append(f"{name} is not a local file, so it is never taken as up to date")
            elif not self.catalog.exists(name):
                missing.append(shown(path))
            else:
                try:
                    record = records.read_record(path)
                except records.RecordUnreadable as exc:
                    reasons.append(f"the fingerprint {shown(records.record_path(path))} is unreadable ({exc})")
                    continue
                if record is None:
                    unrecorded.append(shown(path))
                elif not self._unchanged(self._dataset(name), path, record):
                    reasons.append(f"{shown(path)} changed since its fingerprint was written")
                else:
                    written.append(record["written"])
                    if record["fingerprint"] != key:
                        reasons += [r for r in changes(record, document) if r not in reasons]
                        changed.update(param_changes(record, document))
        if missing:
            reasons.append(_some(missing, "does not exist", "do not exist"))
        if unrecorded:
            reasons.append(_some(unrecorded, "has no fingerprint", "have no fingerprint")
                           + " (written by an older version, copied by hand, or by a run killed between writing "
                             "it and recording it)")
        if not part.outputs:
            reasons.append("it writes no file to fingerprint")
        return Decision(part, reasons, document, key, written=max(written) if written and not reasons else None,
                        params_changed=changed)

    def record(self, decision: Decision, session_id: str | None = None) -> None:
        """Write the records of a part that has just run in the Kedro session ``session_id`` (the
        files it read are hashed again: a download during the run is what it read)."""
        part = decision.part
        document = {**decision.document, "files": self._files(part)}
        key = fingerprint(document)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for name in part.outputs:
            dataset = self._dataset(name)
            path = records.dataset_path(dataset)
            if path is None or not path.exists():
                continue
            held = records.content(dataset, path)
            records.write_record(path, {**document, "fingerprint": key, "dataset": name, "stage": part.stage,
                                        "part": part.label, "path": shown(path), "written": now, "content": held,
                                        "stamp": records.stamp(dataset, path), "session_id": session_id})
            self._identities[name] = held
        decision.fingerprint, decision.written = key, now


def _some(paths: list[str], one: str, many: str) -> str:
    if len(paths) == 1:
        return f"{paths[0]} {one}"
    return f"{paths[0]} and {len(paths) - 1} more outputs {many}"


def _value(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


UNSET = "(not set)"  # a parameter on one side only: param_changes' value on the other


def param_changes(record: Mapping[str, Any], document: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Each parameter whose value differs between a record and the key document a part would
    get now: dotted name -> (recorded, now), :data:`UNSET` where one side lacks it; sorted."""
    old, new = record.get("params", {}), document["params"]
    return {k: (old.get(k, UNSET), new.get(k, UNSET))
            for k in sorted({*old, *new}) if old.get(k, ...) != new.get(k, ...)}


def changes(record: Mapping[str, Any], document: Mapping[str, Any]) -> list[str]:
    """What differs between a record and the key document a part would get now, in words."""
    out: list[str] = []
    changed = param_changes(record, document)
    names = list(changed)
    if names:
        out.append("parameters changed: " + _listed([
            f"{k} {_value(changed[k][0]) if changed[k][0] is not UNSET else UNSET} -> "
            f"{_value(changed[k][1]) if changed[k][1] is not UNSET else '(removed)'}" for k in names]))
    for field_name, what in (("inputs", "input"), ("files", "file")):
        old_items, new_items = record.get(field_name, {}), document[field_name]
        changed = [k for k in sorted({*old_items, *new_items}) if old_items.get(k) != new_items.get(k)]
        if changed:
            out.append(f"{what}{'s' if len(changed) > 1 else ''} {', '.join(changed)} changed")
    out += _code_changes(record, document)
    if record.get("package") != document["package"]:
        out.append(f"package version {record.get('package')} -> {document['package']}")
    if record.get("what") != document["what"] or record.get("format") != document["format"]:
        out.append("the nodes of this part or the fingerprint format changed")
    return out or ["its fingerprint differs"]


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _code_changes(record: Mapping[str, Any], document: Mapping[str, Any]) -> list[str]:
    """``code changed: training/loop.py`` (the files whose digest differs, or that the part runs
    or stopped running), ``library versions changed: torch 2.4.0 -> 2.5.1``; a record from before
    code identities: ``code identity not recorded``. A new Python version changes every file's
    digest (its syntax trees), so the files are not listed then."""
    if "code" not in record or "libraries" not in record:
        return ["code identity not recorded"]
    out: list[str] = []
    old, new = record["libraries"], document["libraries"]
    libraries = [k for k in sorted({*old, *new}) if old.get(k) != new.get(k)]
    if libraries:
        out.append("library versions changed: " + _listed(
            [f"{k} {old.get(k, '(not used)')} -> {new.get(k, '(not used)')}" for k in libraries]))
    was, now = record["code"], document["code"]
    files = [k for k in sorted({*was, *now}) if was.get(k) != now.get(k)]
    if files and old.get("python") == new.get("python"):
        out.insert(0, f"code changed: {_listed(files)}")
    return out


class Upstream:
    """Whether an input that a stage outside the run writes is current: the stage, or one before
    it, would rerun. Judged on what is on disk, once per part."""

    def __init__(self, judge: Judge, in_run: frozenset[str]):
        self.judge = judge
        self.in_run = in_run  # node names of this run
        self._verdicts: dict[int, Decision | None] = {}

    def stale(self, name: str) -> tuple[str, str] | None:
        """(the stage that would rerun, why), or None when ``name`` is current or written in this run."""
        decision = self.stale_decision(name)
        return None if decision is None else (decision.part.stage, decision.reasons[0])

    def stale_decision(self, name: str) -> Decision | None:
        """The decision of the part that would rerun, ``name``'s writer or one before it; None
        when ``name`` is current or written in this run."""
        writer = self.judge.writers.get(name)
        if writer is None or writer.node_names & self.in_run:
            return None
        if id(writer) not in self._verdicts:
            self._verdicts[id(writer)] = None  # a cycle cannot recurse forever
            decision = self.judge.decide(writer)
            verdict = None if decision.current else decision
            for up in writer.inputs if verdict is None else ():
                verdict = verdict or self.stale_decision(up)
            self._verdicts[id(writer)] = verdict
        return self._verdicts[id(writer)]
