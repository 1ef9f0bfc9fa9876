"""The cache's rules in process, on a one-node pipeline in a temporary folder (the CLI scenarios
are in tests/pipelines/test_caching.py): the one fingerprint rule, what makes an output stale and
how the reason reads, the records beside the outputs, and the public API for other hooks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import node, pipeline

from maskdm_pipeline import caching
from maskdm_pipeline.caching import records
from maskdm_pipeline.caching.judge import Judge
from maskdm_pipeline.caching.session import check_rerun
from maskdm_pipeline.caching.units import split_parts
from maskdm_pipeline.datasets import CheckpointSlotDataset, JSONDataset
from maskdm_pipeline.fingerprint import fingerprint, key_document, speed_only
from maskdm_pipeline.pipelines.evaluate.nodes import reference_key


def scale(raw: dict[str, Any], block: dict[str, Any], slot: Any) -> dict[str, Any]:
    return {"v": raw["v"] * block["k"]}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """raw.json -> [scale, params:block, a resume slot] -> out.json, and a judge over it."""
    monkeypatch.chdir(tmp_path)
    catalog = DataCatalog({"raw": JSONDataset(filepath=str(tmp_path / "raw.json")),
                           "out": JSONDataset(filepath=str(tmp_path / "out.json")),
                           "slot": CheckpointSlotDataset(filepath=str(tmp_path / "out.resume.pt"))})
    catalog.save("raw", {"v": 2})
    pipe = pipeline([node(scale, ["raw", "params:block", "slot"], "out", name="scale")])
    (part,) = split_parts(pipe, lambda name: name in catalog, {"scale": "stage"})
    state = {"catalog": catalog, "part": part, "root": tmp_path, "params": {"block": {"k": 3}}}

    def judge() -> Judge:
        return Judge(catalog, state["params"], {"out": part})

    def run() -> None:
        decision = judge().decide(part)
        catalog.save("out", scale(catalog.load("raw"), state["params"]["block"], None))
        judge().record(decision)

    state.update(judge=judge, run=run)
    return state


def test_speed_only_keys_stay_out_of_the_fingerprint() -> None:
    base = {"trainer": {"device": "cpu", "nproc": 1}, "sample": {"batch_size": 64, "steps": 10}}
    faster = {"trainer": {"device": "cpu", "nproc": 8}, "sample": {"batch_size": 8, "steps": 10}}
    assert speed_only("trainer.rdzv_endpoint") and speed_only("pretrain.resume") and not speed_only("trainer.device")
    assert fingerprint(key_document("x", base)) == fingerprint(key_document("x", faster))
    other = {"trainer": {"device": "cuda", "nproc": 1}, "sample": {"batch_size": 64, "steps": 10}}
    assert fingerprint(key_document("x", base)) != fingerprint(key_document("x", other))
    # The computation, the inputs and the files read are part of the key too.
    assert fingerprint(key_document("x", base)) != fingerprint(key_document("y", base))
    assert fingerprint(key_document("x", base, {"a": "1"})) != fingerprint(key_document("x", base, {"a": "2"}))
    one, two = key_document("x", base, files={"w": "1"}), key_document("x", base, files={"w": "2"})
    assert fingerprint(one) != fingerprint(two)


def test_the_feature_cache_key_follows_the_same_rule(tmp_path: Path) -> None:
    """The FID reference statistics' key changes with the weights file's content, not its name."""
    images = np.zeros((10, 1, 8, 8), np.uint8)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"a")
    key = reference_key(64, "c" * 64, images, weights)
    assert key.startswith("inception-pool64_") and len(key) == len("inception-pool64_") + 64
    assert reference_key(64, "c" * 64, images, weights) == key
    weights.write_bytes(b"b")
    assert reference_key(64, "c" * 64, images, weights) != key
    assert reference_key(64, "d" * 64, images, weights) != reference_key(64, "c" * 64, images, weights)


def test_an_output_is_current_only_with_its_record(project: dict[str, Any]) -> None:
    judge, part, root = project["judge"], project["part"], project["root"]
    assert judge().decide(part).reasons == ["out.json does not exist"]
    project["run"]()
    decision = judge().decide(part)
    assert decision.current and decision.written
    record = json.loads((root / "out.json.fingerprint.json").read_text())
    assert record["params"] == {"block.k": 3} and record["dataset"] == "out"
    assert record["inputs"] == {"raw": records.raw_identity(None, root / "raw.json")}
    assert record["fingerprint"] == decision.fingerprint and record["content"].startswith("sha256:")

    project["params"] = {"block": {"k": 4}}
    assert judge().decide(part).reasons == ["parameters changed: block.k 3 -> 4"]
    project["params"] = {"block": {"k": 3}}
    project["catalog"].save("raw", {"v": 5})
    assert judge().decide(part).reasons == ["input raw changed"]


def test_missing_unreadable_or_outdated_records_make_it_stale_and_say_why(project: dict[str, Any]) -> None:
    judge, part, root = project["judge"], project["part"], project["root"]
    project["run"]()
    sidecar = root / "out.json.fingerprint.json"
    good = sidecar.read_text()
    sidecar.write_text("{not json")
    (reason,) = judge().decide(part).reasons
    assert reason.startswith("the fingerprint out.json.fingerprint.json is unreadable (JSONDecodeError")
    sidecar.unlink()
    assert judge().decide(part).reasons == [
        "out.json has no fingerprint (written by an older version, copied by hand, or by a run killed between "
        "writing it and recording it)"]
    sidecar.write_text(good)
    (root / "out.json").write_text('{"v": 7}')  # changed by hand after the record was written
    assert judge().decide(part).reasons == ["out.json changed since its fingerprint was written"]
    assert (root / "out.json").read_text() == '{"v": 7}', "a stale output is never deleted"


def test_a_copy_that_loses_modification_times_stays_current(project: dict[str, Any]) -> None:
    judge, part, root = project["judge"], project["part"], project["root"]
    project["run"]()
    out = root / "out.json"
    os.utime(out, ns=(out.stat().st_atime_ns, out.stat().st_mtime_ns + 10**9))
    assert judge().decide(part).current  # same content: the stamp is refreshed, not the output
    assert records.read_record(out)["stamp"] == records.stamp(None, out)


def test_a_resume_checkpoint_makes_its_stage_not_current(project: dict[str, Any]) -> None:
    project["run"]()
    (project["root"] / "out.resume.pt").write_bytes(b"unfinished")
    (reason,) = project["judge"]().decide(project["part"]).reasons
    assert reason == "resume checkpoint out.resume.pt exists: an unfinished run, which continues from it"


def test_the_files_a_node_function_declares_are_part_of_its_key(project: dict[str, Any]) -> None:
    """A node that reads a file besides its inputs (evaluate's FID weights) declares it with
    ``reads_files``; the judge hashes what the function declares, whatever the function."""
    from maskdm_pipeline.fingerprint import reads_files

    root = project["root"]
    weights = root / "weights.pth"
    weights.write_bytes(b"a")

    @reads_files(lambda params: {"weights.pth": weights} if params["block"]["k"] else {})
    def weighted(raw: dict[str, Any], block: dict[str, Any], slot: Any) -> dict[str, Any]:
        return scale(raw, block, slot)

    catalog = project["catalog"]
    (part,) = split_parts(pipeline([node(weighted, ["raw", "params:block", "slot"], "out", name="scale")]),
                          lambda name: name in catalog, {"scale": "stage"})
    judge = Judge(catalog, project["params"], {"out": part})
    catalog.save("out", weighted(catalog.load("raw"), project["params"]["block"], None))
    judge.record(judge.decide(part))
    assert json.loads((root / "out.json.fingerprint.json").read_text())["files"] == {
        "weights.pth": "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"}
    assert Judge(catalog, project["params"], {"out": part}).decide(part).current
    weights.write_bytes(b"b")
    assert Judge(catalog, project["params"], {"out": part}).decide(part).reasons == ["file weights.pth changed"]


def test_the_evaluate_nodes_declare_the_fid_weights(tmp_path: Path) -> None:
    from maskdm_pipeline.fingerprint import files_read
    from maskdm_pipeline.metrics import FID_WEIGHTS_FILENAME
    from maskdm_pipeline.pipelines.evaluate import nodes

    fid = {"enabled": True, "weights_path": str(tmp_path / "w.pth")}
    for func in (nodes.inception_reference, nodes.score_samples):
        assert files_read(func, {"evaluate": {"fid": fid}}) == {FID_WEIGHTS_FILENAME: tmp_path / "w.pth"}
        assert files_read(func, {"evaluate": {"fid": {**fid, "enabled": False}}}) == {}
    assert files_read(nodes.collect_metrics, {"evaluate": {"fid": fid}}) == {}


def test_the_judge_knows_no_stage_and_no_dataset_class() -> None:
    """What a node reads and what blocks a part are declared by the node and the dataset."""
    import ast
    import inspect

    from maskdm_pipeline.caching import judge

    tree = ast.parse(inspect.getsource(judge))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in imported if m and m.startswith(("maskdm_pipeline.pipelines", "maskdm_pipeline.datasets"))]


def test_read_fingerprints_gives_each_output_its_record(project: dict[str, Any]) -> None:
    project["run"]()
    found = caching.read_fingerprints(project["catalog"])
    assert set(found) == {"out"}
    assert found["out"]["fingerprint"] == project["judge"]().decide(project["part"]).fingerprint


def test_a_record_names_the_stage_part_and_kedro_session_that_wrote_it(project: dict[str, Any]) -> None:
    """What the MLflow hook's ``cache.<stage>`` tags are made of (tracking.cache_tags)."""
    judge = project["judge"]()
    decision = judge.decide(project["part"])
    project["catalog"].save("out", {"v": 6})
    judge.record(decision, "2026-01-02T03.04.05.678Z")
    record = caching.read_fingerprints(project["catalog"])["out"]
    assert (record["stage"], record["part"]) == ("stage", project["part"].label)
    assert record["session_id"] == "2026-01-02T03.04.05.678Z"


def test_cache_rerun_names_a_stage_or_all() -> None:
    stages = ["pretrain", "sample"]
    assert check_rerun(None, stages) is None and check_rerun("all", stages) is None
    assert check_rerun("sample", stages) is None
    assert check_rerun("smaple", stages) == "cache.rerun='smaple': not a stage; use all or one of pretrain, sample"



def copied(data: dict[str, Any]) -> dict[str, Any]:
    return dict(data)


def test_an_input_from_a_stage_outside_the_run_is_named_when_that_stage_would_rerun(
        project: dict[str, Any]) -> None:
    """`--pipelines third` alone: the writer of its input (`second`) is judged on disk, and so are
    the stages before it: here `second` is current and `first`, before it, is not."""
    from kedro.runner import SequentialRunner

    from maskdm_pipeline.caching.judge import Upstream

    catalog, root = project["catalog"], project["root"]
    for name in ("copy", "report"):
        catalog[name] = JSONDataset(filepath=str(root / f"{name}.json"))
    catalog["params:block"] = project["params"]["block"]
    pipe = pipeline([node(scale, ["raw", "params:block", "slot"], "out", name="scale"),
                     node(copied, "out", "copy", name="copy"), node(copied, "copy", "report", name="read")])
    parts = split_parts(pipe, lambda name: name in catalog and not name.startswith("params:"),
                        {"scale": "first", "copy": "second", "read": "third"})
    writers = {out: p for p in parts for out in p.outputs}
    SequentialRunner().run(pipe, catalog)
    judge = Judge(catalog, project["params"], writers)
    for part in parts:
        judge.record(judge.decide(part))

    third = frozenset({"read"})
    assert Upstream(Judge(catalog, project["params"], writers), third).stale("copy") is None
    changed = Judge(catalog, {"block": {"k": 5}}, writers)
    assert Upstream(changed, third).stale("copy") == ("first", "parameters changed: block.k 3 -> 5")
    assert Upstream(changed, frozenset({"scale", "copy", "read"})).stale("copy") is None  # decided in the run


# ----------------------------------------------------------------------------- shards and raw folders
def test_a_shard_folder_is_identified_by_its_content_checksum(tmp_path: Path) -> None:
    """Issue 14's chaining from issue 13's shards: the identity is the index's content checksum
    (plus the index's meta, what the dataset card is made of), whatever the cut into shard files;
    a changed image, labels that disagree with the index, or a truncated shard change it."""
    from maskdm_pipeline.datasets import ShardDataset

    images = np.random.default_rng(0).integers(0, 256, (30, 1, 4, 4), dtype=np.uint8)
    data = {"images": images, "labels": np.arange(30) % 3, "meta": {"split": "train"}}
    whole, cut = ShardDataset(str(tmp_path / "whole")), ShardDataset(str(tmp_path / "cut"), max_shard_bytes=64)
    whole.save(data)
    cut.save(data)
    identity = whole.content_identity()
    assert identity.startswith(f"shards:{whole.load()['checksum']}:meta:")
    assert cut.content_identity() == identity and len(list((tmp_path / "cut").glob("images-*.npy"))) == 8
    assert records.content(whole, whole.path) == records.stamp(whole, whole.path) == identity
    assert ShardDataset(str(tmp_path / "absent")).content_identity() == "missing"

    other = images.copy()
    other[7, 0, 1, 1] ^= 1
    whole.save({**data, "images": other})
    assert whole.content_identity() not in (identity, None)
    whole.save({**data, "meta": {"split": "heldout"}})
    assert whole.content_identity() != identity
    whole.save(data)
    assert whole.content_identity() == identity

    np.save(tmp_path / "whole" / "labels.npy", np.arange(30) % 2)  # same length, other labels
    assert whole.content_identity().startswith("unreadable:") and "disagrees" in whole.content_identity()
    shard = tmp_path / "cut" / "images-00003.npy"
    shard.write_bytes(shard.read_bytes()[:-3])
    assert cut.content_identity().startswith("unreadable:") and "truncated" in cut.content_identity()


def test_shard_records_stay_beside_the_folder_through_its_swaps(project: dict[str, Any]) -> None:
    """The record of a shard folder is written beside it; the atomic folder swap of every later
    save leaves it there (and nothing inside), and the judge sees a rewrite with other content."""
    from maskdm_pipeline.atomic import remove_stale_temporaries
    from maskdm_pipeline.datasets import ShardDataset

    root = project["root"]
    catalog = DataCatalog({"shards": ShardDataset(str(root / "shards"))})
    pipe = pipeline([node(lambda: None, None, "shards", name="write")])
    (part,) = split_parts(pipe, lambda name: name in catalog, {"write": "stage"})

    def judge() -> Judge:
        return Judge(catalog, {}, {"shards": part})

    images = np.zeros((4, 1, 2, 2), np.uint8)
    catalog.save("shards", {"images": images})
    judge().record(judge().decide(part))
    record = root / "shards.fingerprint.json"
    assert record.is_file() and judge().decide(part).current
    for fill in (0, 1):
        catalog.save("shards", {"images": images + fill})
        assert record.is_file() and not list((root / "shards").glob("*fingerprint*"))
        assert sorted(p.name for p in (root / "shards").iterdir()) == ["digests.npy", "images-00000.npy", "index.json"]
    assert judge().decide(part).reasons == ["shards changed since its fingerprint was written"]
    assert remove_stale_temporaries(root) == [] and record.is_file()


def test_a_raw_image_folder_is_identified_by_its_listing_without_opening_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageFolder's identity: (relative path, size, mtime) of every file it loads, by the rule
    every raw folder follows (fingerprint.folder_listing); no file is opened."""
    import builtins

    from maskdm_pipeline.datasets import ImageFolder
    from maskdm_pipeline.fingerprint import folder_listing

    for name in ("a/1.png", "a/2.png", "b/3.jpg", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    everything, images = ImageFolder(str(tmp_path)), ImageFolder(str(tmp_path), suffixes=[".png", ".jpg"])
    real_open = builtins.open

    def no_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        assert not str(file).startswith(str(tmp_path)), f"opened {file}"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_open)
    identity = everything.content_identity()
    assert identity == folder_listing(tmp_path) and identity.startswith("listing:")
    assert images.content_identity() != identity  # notes.txt is not among its files
    filtered = images.content_identity()
    (tmp_path / "notes.txt").write_bytes(b"longer notes")  # not an image of the filtered entry
    assert images.content_identity() == filtered and everything.content_identity() != identity
    png = tmp_path / "a" / "1.png"
    os.utime(png, ns=(png.stat().st_atime_ns, png.stat().st_mtime_ns + 10**9))  # rewritten, same bytes
    assert images.content_identity() != filtered
    assert ImageFolder(str(tmp_path / "absent")).content_identity() == "missing"
