"""The cache through the real CLI (issue 14): a finished smoke project (one ``kedro run --env smoke``
for the whole session, ``smoke_run``) copied per scenario, then the commands a user types.

Each scenario reads the cache's log lines (``maskdm_pipeline.caching``): ``<stage>: up to date
(fingerprint ..., written ...), skipped`` for a stage whose parts are all current, these in
pipeline order, else one line per part, ``<stage> [<part>]: runs (<why>)`` or ``... up to date
...``; and Kedro's "Pipeline execution completed successfully in X sec." once, X the whole run's
duration. The three runners are each used once (Sequential by default, Thread and Parallel
below). MLflow tracking stays on in the no-op run (the smoke run checks the store); the other
scenarios switch it off in their copy, which saves its start-up (about 2 s a command here) and
changes nothing the cache does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from image_factory import good_image
from kedro_project import kedro, kedro_command, make_project, subprocess_env

STAGES = ("preprocess", "pretrain", "baseline", "finetune", "sample", "evaluate", "report")
UP_TO_DATE = r"{}: up to date \(fingerprint [0-9a-f]{{6}}, written \d{{4}}-\d\d-\d\d \d\d:\d\d\), skipped"
CACHE_LINE = re.compile(r" - maskdm_pipeline\.caching - \w+ - (.*)$", re.MULTILINE)
WHEN = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
COMPLETED = re.compile(WHEN + r" - kedro\.runner\.\w+ - INFO - Pipeline execution completed successfully in "
                       r"(\d+\.\d) sec\.$", re.MULTILINE)
DECIDED = re.compile(WHEN + r" - maskdm_pipeline\.caching - INFO - .*: (runs|up to date) \(", re.MULTILINE)


def _run(root: Path, *args: str, env_name: str = "smoke") -> list[str]:
    """``kedro run --env <env_name> <args>``; the cache's log lines. Every run ends with Kedro's
    completion line, once, and gives its stage lines in pipeline order."""
    result = kedro(root, "run", "--env", env_name, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    _completed_once(output)
    lines = CACHE_LINE.findall(output)
    _in_pipeline_order(lines)
    return lines + [f"[log] {line}" for line in output.splitlines() if "Running node" in line]


def _completed_once(output: str) -> None:
    """One "Pipeline execution completed" line for the whole run (not one per batch of parts), and
    its duration covers the run: at least the time from the first decision to that line."""
    completed = COMPLETED.findall(output)
    assert len(completed) == 1, f"{len(completed)} completion lines: {completed}\n{output[-3000:]}"
    (end, seconds), start = completed[0], DECIDED.search(output)
    assert start, output[-3000:]
    span = (dt.datetime.strptime(end, "%Y-%m-%d %H:%M:%S,%f")
            - dt.datetime.strptime(start.group(1), "%Y-%m-%d %H:%M:%S,%f")).total_seconds()
    assert float(seconds) >= span - 0.1, f"completed in {seconds} s, yet the run took {span:.2f} s"


def _in_pipeline_order(lines: list[str]) -> None:
    """The ``<stage>: up to date`` lines in the order of :data:`STAGES`."""
    shown = [stage for line in lines for stage in STAGES if re.fullmatch(UP_TO_DATE.format(stage), line)]
    assert shown == sorted(shown, key=STAGES.index), f"stage lines out of pipeline order: {shown}"


def _has(lines: list[str], pattern: str) -> bool:
    return any(re.fullmatch(pattern, line) for line in lines)


def _up_to_date(lines: list[str], *names: str) -> None:
    for name in names:
        hits = [line for line in lines if re.fullmatch(UP_TO_DATE.format(re.escape(name)), line)]
        assert len(hits) == 1, f"{name}: {hits or 'no up-to-date line'} in\n" + "\n".join(lines)


def _runs(lines: list[str], name: str, why: str = ".*") -> None:
    assert _has(lines, rf"{re.escape(name)}: runs \({why}\)"), f"{name} did not run ({why}):\n" + "\n".join(lines)


def _scored(*models: str) -> list[str]:
    """The evaluate parts of each model: its scores and its guidance sweep (two parts: a sweep
    setting reruns the sweep alone)."""
    return [f"evaluate [{model}.{node}]" for model in models for node in ("score_samples", "guidance_sweep")]


def _untracked(root: Path, env_name: str = "smoke") -> Path:
    """No MLflow run for the commands of this test (``disable_tracking`` of conf/*/mlflow.yml)."""
    names = ", ".join(("__default__", *STAGES))
    (root / "conf" / env_name / "mlflow.yml").write_text(f"tracking:\n  disable_tracking:\n    pipelines: [{names}]\n")
    return root


@pytest.fixture
def copy(smoke_copy: Path) -> Path:
    """A private copy of the finished smoke project, MLflow off."""
    return _untracked(smoke_copy)


def _digests(root: Path, *patterns: str) -> dict[str, str]:
    files = sorted(p for pattern in patterns for p in (root / "data").rglob(pattern) if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_second_run_skips_every_stage_and_trains_nothing(smoke_copy: Path) -> None:
    before = _digests(smoke_copy, "*.pt", "*.npz")
    lines = _run(smoke_copy)
    _up_to_date(lines, *STAGES)
    assert [line.split(":")[0] for line in lines if " up to date " in line] == list(STAGES)  # pipeline order
    assert not [line for line in lines if line.startswith("[log]")], "a node ran"
    assert _digests(smoke_copy, "*.pt", "*.npz") == before
    # Nothing was recomputed, yet the run's MLflow record holds the current metrics and the
    # fingerprints of the outputs they come from.
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{smoke_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("maskdm_pipeline")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    metrics = json.loads((smoke_copy / "data/08_reporting/metrics.json").read_text())
    assert run.data.metrics["maskdm.fd_clf"] == pytest.approx(metrics["maskdm"]["fd_clf"])
    record = json.loads((smoke_copy / "data/06_models/pretrained.pt.fingerprint.json").read_text())
    logged = client.download_artifacts(run.info.run_id, "cache/fingerprints.json", str(smoke_copy / "logged"))
    assert json.loads(Path(logged).read_text())["outputs"]["pretrained"] == record
    assert run.data.tags["cache.pretrain"] == "up to date" and not run.outputs.model_outputs


def test_finetune_lr_reruns_finetuning_and_what_reads_it(copy: Path) -> None:
    """With ThreadRunner: MaskDM's side reruns, the pre-training and the baseline side do not."""
    kept = _digests(copy, "pretrained.pt", "baseline.pt", "baseline_samples.npz")
    lines = _run(copy, "--runner", "ThreadRunner", "--params", "finetune.lr=0.001")
    _up_to_date(lines, "preprocess", "pretrain", "baseline", "sample [baseline]", *_scored("baseline"))
    _runs(lines, "finetune", r"parameters changed: finetune\.lr 0\.002 -> 0\.001")
    _runs(lines, "sample [maskdm]", "input finetuned changed")
    for name in _scored("maskdm"):
        _runs(lines, name)
    _runs(lines, "evaluate [collect_metrics]")
    assert [line for line in lines if line.startswith("report") and "runs (" in line]
    assert _digests(copy, "pretrained.pt", "baseline.pt", "baseline_samples.npz") == kept
    state = torch.load(copy / "data/06_models/finetuned.pt", weights_only=True)
    assert state["config"]["stage"]["lr"] == 0.001 and state["step"] == 30


def test_mask_ratio_reruns_pretraining_and_everything_after_it(copy: Path) -> None:
    """With ParallelRunner (the session keeps its shared-memory catalog)."""
    baseline = _digests(copy, "baseline.pt")
    lines = _run(copy, "--runner", "ParallelRunner", "--params", "pretrain.mask.ratio=0.5")
    _up_to_date(lines, "preprocess", "baseline", "sample [baseline]", *_scored("baseline"))
    _runs(lines, "pretrain", r"parameters changed: pretrain\.mask\.ratio 0\.75 -> 0\.5")
    _runs(lines, "finetune", "input pretrained changed")
    _runs(lines, "sample [maskdm]")
    for name in _scored("maskdm"):
        _runs(lines, name)
    assert _digests(copy, "baseline.pt") == baseline
    state = torch.load(copy / "data/06_models/pretrained.pt", weights_only=True)
    assert state["config"]["stage"]["mask"]["ratio"] == 0.5


def test_sampler_change_reruns_sampling_scoring_and_report_and_fewer_samples_leave_that_many_pngs(
        copy: Path) -> None:
    """Another sampler and 8 samples instead of 64 (the batch size is left out of fingerprints)."""
    lines = _run(copy, "--params", "sample.sampler=ddim,sample.num_samples=8,sample.batch_size=8")
    _up_to_date(lines, "preprocess", "pretrain", "baseline", "finetune")
    for model in ("maskdm", "baseline"):
        _runs(lines, f"sample [{model}]", r"parameters changed: sample\.num_samples 64 -> 8, "
                                          r"sample\.sampler 'dpm\+\+2m' -> 'ddim'")
        _runs(lines, f"evaluate [{model}.score_samples]", f"input {model}_samples changed")
        _runs(lines, f"evaluate [{model}.guidance_sweep]",  # it reads params:sample too
              rf"parameters changed: .*; inputs {model}_samples, {model}_sampling_info changed")
        folder = copy / f"data/07_model_output/{model}_png"
        assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(8)]
        assert (folder.parent / f"{model}_png.fingerprint.json").is_file()
    assert [line for line in lines if line.startswith("report") and "runs (" in line]


def _interrupt(root: Path, params: str, after: str | tuple[str, ...], sig: signal.Signals = signal.SIGINT,
                *extra: str) -> tuple[int, str]:
    """``kedro run --env smoke --params <params> <extra>``, ``sig`` (Ctrl-C by default) once
    ``after`` is logged (a tuple: once each pattern has been logged, in turn), to the command's
    whole process group, as a terminal's Ctrl-C and a scheduler's kill do (a ParallelRunner's
    workers would otherwise outlive a kill -9)."""
    waits = [after] if isinstance(after, str) else list(after)
    proc = subprocess.Popen([*kedro_command(), "run", "--env", "smoke", "--params", params, *extra], cwd=root,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if re.search(waits[0], line):
            waits.pop(0)
        if not waits:
            os.killpg(proc.pid, sig)
            break
    lines += proc.stdout.readlines()
    return proc.wait(timeout=120), "".join(lines)


def test_interrupted_rerun_then_the_command_the_message_gives(copy: Path) -> None:
    params = "baseline.steps=300,baseline.eval_every=0"
    code, output = _interrupt(copy, params, r"baseline step ([5-9]\d|[1-9]\d\d)/300")
    assert code == 130, output[-3000:]
    message = re.search(r"Error: baseline: stopped by SIGINT after step (\d+)/300\. .* a rerun resumes from it",
                        output)
    assert message, output[-3000:]
    assert CACHE_LINE.findall(output)[-1] == "To go on, rerun the same command: what finished is skipped as up to date."
    resume = copy / "data/06_models/baseline.resume.pt"
    assert resume.is_file()

    result = kedro(copy, "run", "--env", "smoke", "--params", params)  # the same command
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    lines = CACHE_LINE.findall(output)
    _runs(lines, "baseline", r".*resume checkpoint data/06_models/baseline\.resume\.pt exists.*")
    assert re.search(rf"baseline: resuming from \S*baseline\.resume\.pt at step {message.group(1)}\b", output)
    _up_to_date(lines, "preprocess", "pretrain", "finetune", "sample [maskdm]", *_scored("maskdm"))
    _runs(lines, "sample [baseline]", "input baseline changed")
    for name in _scored("baseline"):
        _runs(lines, name)
    assert torch.load(copy / "data/06_models/baseline.pt", weights_only=True)["step"] == 300
    assert not resume.exists()


def test_interrupted_under_cache_rerun_the_hint_leaves_it_out_and_its_command_goes_on(copy: Path) -> None:
    """Ctrl-C in finetune under ``cache.rerun=pretrain``, after the forced pre-training finished:
    the same command would train it again, so the hint names the command without that key; that
    command skips pre-training and resumes finetune."""
    params = "finetune.steps=300,cache.rerun=pretrain,finetune.eval_every=0"
    code, output = _interrupt(copy, params, r"finetune step ([5-9]\d|[1-9]\d\d)/300")
    assert code == 130, output[-3000:]
    step = re.search(r"Error: finetune: stopped by SIGINT after step (\d+)/300\.", output)
    assert step, output[-3000:]
    hint = CACHE_LINE.findall(output)[-1]
    command = re.fullmatch(r"To go on, rerun without cache\.rerun=pretrain, which would redo pretrain again "
                           r"\(`(kedro run .*)`\): what finished is skipped as up to date\.", hint)
    assert command, hint
    assert command.group(1) == "kedro run --env smoke --params finetune.steps=300,finetune.eval_every=0"

    result = kedro(copy, *command.group(1).split()[1:])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    lines = CACHE_LINE.findall(output)
    _up_to_date(lines, "preprocess", "pretrain", "baseline")
    _runs(lines, "finetune", r".*resume checkpoint data/06_models/finetuned\.resume\.pt exists.*")
    assert re.search(rf"finetune: resuming from \S*finetuned\.resume\.pt at step {step.group(1)}\b", output)


@pytest.mark.parametrize("runner", ["SequentialRunner", "ThreadRunner", "ParallelRunner"])
def test_kill9_in_one_training_stage_keeps_the_other_that_finished_in_the_same_batch(copy: Path, runner: str) -> None:
    """Baseline and fine-tuning both stale, so Kedro's runner gets them in one batch (side by side
    under Thread and Parallel); ``kill -9`` on the whole command once the short baseline has
    finished and fine-tuning has logged a step after that: a rerun of the same command skips the
    baseline (its record was written when it finished, not at the end of the batch) and trains
    only fine-tuning. Seen in a real 64-token experiment: a finished 8,000-step baseline trained
    again because the session ended during fine-tuning."""
    params = "baseline.steps=20,finetune.steps=400,baseline.eval_every=0,finetune.eval_every=0"
    finished = (r"maskdm_pipeline\.caching - INFO - baseline: finished, recorded as up to date "
                r"\(fingerprint [0-9a-f]{6}\)")
    code, output = _interrupt(copy, params, (finished, r"finetune step \d+/400"), signal.SIGKILL, "--runner", runner)
    assert code == -signal.SIGKILL, output[-3000:]
    assert "Completed node: finetune" not in output, output[-3000:]

    lines = _run(copy, "--params", params)  # the same command
    _up_to_date(lines, "preprocess", "pretrain", "baseline")
    _runs(lines, "finetune", r".*parameters changed: .*finetune\.steps 30 -> 400")
    assert not [line for line in lines if "Running node: baseline" in line], lines


def test_cache_rerun_reruns_what_it_names(copy: Path) -> None:
    """``cache.rerun=sample``: sampling reruns; it draws the same images (per-sample seeds), so
    the scores are still current (early cut-off); only what reads the sampling record, which
    holds the new timings, reruns: the guidance sweep (it reads the record's settings to reuse the
    stage's samples) and the metrics."""
    samples = _digests(copy, "*_samples.npz")
    lines = _run(copy, "--params", "cache.rerun=sample")
    _up_to_date(lines, "preprocess", "pretrain", "baseline", "finetune",
                "evaluate [maskdm.score_samples]", "evaluate [baseline.score_samples]")
    for model in ("maskdm", "baseline"):
        _runs(lines, f"sample [{model}]", r"cache\.rerun=sample")
        _runs(lines, f"evaluate [{model}.guidance_sweep]", f"input {model}_sampling_info changed")
    assert sum("Running node: draw_samples" in line for line in lines) == 2
    assert _digests(copy, "*_samples.npz") == samples


# raw_images: the lean folder entry the README recommends; raw_pretrain_images in a folder of its
# own too (convert_pretrain_images lists it even with pretrain.data: target), as a
# PartitionedDataset, the other entry a user may have: loading the embedded digits would only add
# seconds here.
FOLDER_CATALOG = """raw_images:
  type: maskdm_pipeline.datasets.ImageFolder
  path: data/01_raw/digits
raw_pretrain_images:
  type: partitions.PartitionedDataset
  path: data/01_raw/source
  dataset:
    type: pillow.ImageDataset
"""


@pytest.fixture
def folder_project(tmp_path: Path) -> Path:
    """A project whose raw images are a folder of 160 PNGs (env ``folder``: smoke sizes)."""
    root = make_project(tmp_path / "project")
    env = root / "conf" / "folder"
    shutil.copytree(root / "conf" / "smoke", env)
    (env / "catalog.yml").write_text(FOLDER_CATALOG)
    _untracked(root, "folder")
    (env / "parameters_preprocess.yml").write_text("preprocess:\n  resolution: 8\n  subset: null\n")
    for name, count in (("digits", 160), ("source", 2)):
        folder = root / "data/01_raw" / name
        folder.mkdir(parents=True)
        for i in range(count):
            good_image("L", size=(12, 12), seed=i).save(folder / f"{i:04d}.png")
    return root


def test_one_raw_image_replaced_reruns_preprocessing_and_later_stages_only_if_the_data_changed(
        folder_project: Path) -> None:
    """Preprocessing is two parts joined by a file: the conversion (raw images -> the converted
    shards) and the split (-> the primary shards); each shard folder is identified by its index's
    content checksum, so what comes after a conversion reruns only if the converted content changed."""
    run = ("--pipelines", "preprocess,pretrain")
    _run(folder_project, *run, env_name="folder")
    image = folder_project / "data/01_raw/digits/0000.png"
    primary = _digests(folder_project, "03_primary/*/*")
    pretrained = _digests(folder_project, "pretrained.pt")
    records = sorted(p.name for p in (folder_project / "data").rglob("*.fingerprint.json"))
    assert {"converted_images.fingerprint.json", "train.fingerprint.json", "heldout.fingerprint.json",
            "pretrain_source.fingerprint.json"} <= set(records)
    for folder in ("02_intermediate/converted_images", "03_primary/train", "03_primary/heldout"):
        assert not list((folder_project / "data" / folder).rglob("*.fingerprint.json")), "a record inside a folder"

    # The same bytes, written again (a new modification time): the conversion reruns, its shards
    # come out with the same content, so nothing after it reruns.
    image.write_bytes(image.read_bytes())
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    lines = _run(folder_project, *run, env_name="folder")
    _runs(lines, "preprocess [convert_images]", "input raw_images changed")
    _up_to_date(lines, "preprocess [split_images]", "preprocess [fd_clf.fit_classifier]",
                "preprocess [fd_clf.reference]", "pretrain")
    assert _digests(folder_project, "03_primary/*/*") == primary

    # Another image: the shards change, and the split and pre-training rerun on them.
    good_image("L", size=(12, 12), seed=999).save(image)
    lines = _run(folder_project, *run, env_name="folder")
    _runs(lines, "preprocess [convert_images]", "input raw_images changed")
    _runs(lines, "preprocess [split_images]", "input converted_images changed")
    assert _digests(folder_project, "03_primary/train/*") != {k: v for k, v in primary.items() if "/train/" in k}
    _runs(lines, "pretrain", "input primary_train changed")
    assert _digests(folder_project, "pretrained.pt") != pretrained


def test_code_edits_rerun_what_runs_that_code_and_a_fresh_copy_reruns_nothing(copy: Path, monkeypatch) -> None:
    """The package copied into the project's src/ (new paths and modification times, as a fresh
    clone) and imported from there. Then edits of the copy: comments and docstrings of the training
    loop and code of a module no part runs change nothing; code of the evaluate nodes reruns every
    evaluate part, naming the file, and what reads an output that changed (the report)."""
    import maskdm_pipeline

    package = copy / "src" / "maskdm_pipeline"
    shutil.copytree(Path(maskdm_pipeline.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(copy / "src"), os.environ.get("PYTHONPATH", "")]))
    _up_to_date(_run(copy), *STAGES)

    def edit(name: str, old: str, new: str) -> None:
        path = package / name
        assert old in path.read_text(), name
        path.write_text(path.read_text().replace(old, new, 1))

    edit("training/loop.py", '"""', '"""Edited docstring. ')
    edit("training/loop.py", "\nimport ", "\n# an edited comment\nimport ")
    edit("console.py", "\nimport ", "\n_EDITED = 1\nimport ")
    edit("pipelines/evaluate/nodes.py", "\ndef collect_metrics(", "\ndef _collected(")
    with (package / "pipelines/evaluate/nodes.py").open("a") as nodes:
        nodes.write("\n\ndef collect_metrics(*args, **kwargs):\n"
                    "    return {**_collected(*args, **kwargs), 'edited': 1}\n")
    lines = _run(copy)
    _up_to_date(lines, "preprocess", "pretrain", "baseline", "finetune", "sample")
    evaluate = [line for line in lines if line.startswith("evaluate [") and "runs (" in line]
    assert len(evaluate) == 6, lines  # the FID reference, each model's scores and sweep, the metrics
    assert all(line.endswith(": runs (code changed: pipelines/evaluate/nodes.py)") for line in evaluate), evaluate
    assert _has(lines, r"report( \[.*\])?: runs \(input metrics changed\)"), lines
    assert json.loads((copy / "data/08_reporting/metrics.json").read_text())["edited"] == 1


def test_a_retrained_stage_with_the_same_weights_changes_nothing_after_it(copy: Path) -> None:
    """``cache.rerun=finetune``: fine-tuning reruns and writes a new file (its wall times) with
    bitwise the same weights, so MaskDM's sampling and scoring stay up to date; what shows the
    wall time (metrics.json, the report) reruns. A changed weight reruns them:
    test_finetune_lr_reruns_finetuning_and_what_reads_it."""
    kept = _digests(copy, "*_samples.npz", "*_scores.json")
    checkpoint = copy / "data/06_models/finetuned.pt"
    before = (hashlib.sha256(checkpoint.read_bytes()).hexdigest(), torch.load(checkpoint, weights_only=True))
    lines = _run(copy, "--params", "cache.rerun=finetune")
    _runs(lines, "finetune", r"cache\.rerun=finetune")
    _up_to_date(lines, "preprocess", "pretrain", "baseline", "sample", *_scored("maskdm", "baseline"))
    _runs(lines, "evaluate [collect_metrics]", "input finetune_accounting changed")
    after = torch.load(checkpoint, weights_only=True)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() != before[0], "the file holds new wall times"
    assert after["stats"]["wall_time_s"] != before[1]["stats"]["wall_time_s"]
    assert all(torch.equal(after["ema"]["model"][k], w) for k, w in before[1]["ema"]["model"].items())
    assert _digests(copy, "*_samples.npz", "*_scores.json") == kept
