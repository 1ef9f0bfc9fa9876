"""The cache follows the code, in process: a part judged against a copy of the package (the judge
reads its code identities from the copy, as a ``kedro run`` reads them from the package it
imports), edited as a user edits it. The CLI scenario is in tests/pipelines/test_caching.py
(``test_code_edits_rerun_what_runs_that_code_and_a_fresh_copy_reruns_nothing``); which files
count and which edits change a digest: test_codegraph.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from kedro.io import DataCatalog
from kedro.pipeline import node, pipeline

from maskdm_pipeline import codegraph
from maskdm_pipeline.caching.judge import Judge
from maskdm_pipeline.caching.units import split_parts
from maskdm_pipeline.datasets import CheckpointSlotDataset, JSONDataset
from maskdm_pipeline.fingerprint import fingerprint

PACKAGE = Path(codegraph.__file__).parent


def scale(raw: dict[str, Any], block: dict[str, Any], slot: Any) -> dict[str, Any]:
    return {"v": raw["v"] * block["k"]}


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Any]:
    """raw.json -> [scale, params:block, a resume slot] -> out.json, through the project's dataset
    classes (datasets/files.py, datasets/checkpoint.py: their code, and what they import, is the
    part's code here), and a copy of the package to edit."""
    tree = tmp_path / "site" / "maskdm_pipeline"
    shutil.copytree(PACKAGE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    catalog = DataCatalog({"raw": JSONDataset(filepath=str(tmp_path / "raw.json")),
                           "out": JSONDataset(filepath=str(tmp_path / "out.json")),
                           "slot": CheckpointSlotDataset(filepath=str(tmp_path / "out.resume.pt"))})
    catalog.save("raw", {"v": 2})
    (part,) = split_parts(pipeline([node(scale, ["raw", "params:block", "slot"], "out", name="scale")]),
                          lambda name: name in catalog, {"scale": "stage"})
    params = {"block": {"k": 3}}
    read = {"modules": codegraph.read_package(tree)}  # read again after each edit (_append)

    def judge() -> Judge:
        return Judge(catalog, params, {"out": part}, read["modules"])

    def run() -> None:
        decision = judge().decide(part)
        catalog.save("out", scale(catalog.load("raw"), params["block"], None))
        judge().record(decision)

    return {"tree": tree, "part": part, "judge": judge, "run": run, "record": tmp_path / "out.json.fingerprint.json",
            "read": read}


def _edit(project: dict[str, Any], appended: dict[str, str],
          replaced: dict[str, tuple[str, str]] | None = None) -> None:
    """Append text to some modules of the copy, replace a text in others, then read the copy again."""
    for name, text in appended.items():
        path = project["tree"] / name
        path.write_text(path.read_text() + text)
    for name, (old, new) in (replaced or {}).items():
        path = project["tree"] / name
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new, 1))
    project["read"]["modules"] = codegraph.read_package(project["tree"])


def _reasons(project: dict[str, Any]) -> list[str]:
    return project["judge"]().decide(project["part"]).reasons


def test_an_edit_of_a_module_the_part_imports_reruns_it_and_names_the_file(project: dict[str, Any]) -> None:
    """datasets/checkpoint.py imports fileio.py, which imports atomic.py: an edit of either, however
    deep, reruns the part; the record holds the digests the reason is told from."""
    project["run"]()
    assert not _reasons(project)
    record = json.loads(project["record"].read_text())
    assert {"datasets/checkpoint.py", "datasets/files.py", "fileio.py", "atomic.py"} <= set(record["code"])
    assert record["libraries"]["python"] and "torch" in record["libraries"]
    _edit(project, {"atomic.py": "\n\ndef _edited():\n    return 2\n"})
    assert _reasons(project) == ["code changed: atomic.py"]
    _edit(project, dict.fromkeys(("fileio.py", "listing.py", "datasets/files.py", "datasets/checkpoint.py"),
                                 "\n\n_EDITED = 1\n"))
    assert _reasons(project) == [
        "code changed: atomic.py, datasets/checkpoint.py, datasets/files.py, fileio.py and 1 more"]
    project["run"]()
    assert not _reasons(project)


def test_edits_of_modules_it_does_not_import_or_of_comments_and_docstrings_rerun_nothing(
        project: dict[str, Any]) -> None:
    project["run"]()
    _edit(project, {"reporting/markdown.py": "\n\ndef _edited():\n    return 3\n",  # the report's, not this part's
                    "caching/judge.py": "\n\n_EDITED = 1\n", "fileio.py": "\n# a comment at the end\n"},
          {"fileio.py": ('"""Safe file I/O', '"""Safe (edited) file I/O'),
           "atomic.py": ("\nimport contextlib", "\n# a new comment\nimport contextlib")})
    assert not _reasons(project)


def test_a_record_from_before_code_identities_reruns_once_saying_so(project: dict[str, Any]) -> None:
    project["run"]()
    record = json.loads(project["record"].read_text())
    old = {k: v for k, v in record.items() if k not in ("code", "libraries")}
    old["fingerprint"] = fingerprint({k: old[k] for k in ("format", "what", "params", "inputs", "files", "package")})
    project["record"].write_text(json.dumps(old))
    assert _reasons(project) == ["code identity not recorded"]
    project["run"]()
    assert not _reasons(project)


def test_a_library_or_python_version_change_is_named(project: dict[str, Any]) -> None:
    project["run"]()
    record = json.loads(project["record"].read_text())
    torch_now = record["libraries"]["torch"]
    changed = {**record, "fingerprint": "0" * 64, "libraries": {**record["libraries"], "torch": "2.0.0"}}
    project["record"].write_text(json.dumps(changed))
    assert _reasons(project) == [f"library versions changed: torch 2.0.0 -> {torch_now}"]
    # another Python: every file's syntax tree reads differently, so the files are not listed
    python_now = record["libraries"]["python"]
    changed = {**record, "fingerprint": "0" * 64, "code": {name: "0" * 64 for name in record["code"]},
               "libraries": {**record["libraries"], "python": "3.0"}}
    project["record"].write_text(json.dumps(changed))
    assert _reasons(project) == [f"library versions changed: python 3.0 -> {python_now}"]
