"""`kedro run --pipelines evaluate` under each Kedro runner, in copies of the finished smoke
project (`cp -r`: their stores hold the original's locations), started together: MLflow gets the
metrics and files each run wrote over the previous ones, under that copy's root, and the run
started from notebooks/ reads and writes only under the project root.

Module-scoped: the three runs are started at once (about the time of one on two cores) and the
tests below read what they left.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kedro_project import PROJECT_ROOT, kedro_command, subprocess_env

from maskdm_pipeline import __version__, tracking

RUNNERS = ("SequentialRunner", "ThreadRunner", "ParallelRunner")
FROM_NOTEBOOKS = "SequentialRunner"  # started in notebooks/, with a new experiment made from there
WEIGHTS = "weights/pt_inception.pth"  # a relative path parameter; no such file
STALE = 999.0  # the fd_clf of the metrics.json each copy starts with


@pytest.fixture(scope="module")
def evaluate_runs(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """``{runner: (project root, output)}`` after one `kedro run --pipelines evaluate` each."""
    started = {}
    for runner in RUNNERS:
        root = tmp_path_factory.mktemp(runner) / "project"
        shutil.copytree(smoke_run, root, symlinks=True)
        # An earlier metrics.json that this run rewrites: MLflow must get the new one, not this.
        metrics = root / "data" / "08_reporting" / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "maskdm": {"fd_clf": STALE}}))
        cwd = root
        if runner == FROM_NOTEBOOKS:
            cwd = root / "notebooks"
            (root / "info.log").unlink(missing_ok=True)
            (root / "conf" / "smoke" / "mlflow.yml").write_text(
                "tracking:\n  experiment:\n    name: from_notebooks\n")
        command = [*kedro_command(), "run", "--env", "smoke", "--pipelines", "evaluate", "--runner", runner,
                   "--params", f"evaluate.fid.weights_path={WEIGHTS}"]
        started[runner] = (root, subprocess.Popen(command, cwd=cwd, env=subprocess_env(), text=True,
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    runs = {}
    for runner, (root, process) in started.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{runner}:\n{output[-3000:]}"
        runs[runner] = (root, output)
    return runs


def _latest_run(root: Path, experiment: str) -> tuple[Any, Any, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    run = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    return client, found, run


@pytest.mark.parametrize("runner", RUNNERS)
def test_every_runner_logs_the_run_through_its_id(evaluate_runs: dict[str, tuple[Path, str]], runner: str) -> None:
    """The run has this run's quality metrics (those of the metrics.json it wrote over an earlier
    one) and its files, byte for byte, under this copy's mlruns/, a name that says what ran and
    tags that say with which runner and code; nothing is logged from a worker thread's or
    process's own MLflow state."""
    root, output = evaluate_runs[runner]
    assert "MLflow logging failed" not in output, output[-3000:]
    client, experiment, run = _latest_run(root, "from_notebooks" if runner == FROM_NOTEBOOKS else "maskdm_pipeline")
    assert run.info.status == "FINISHED"
    shown = "" if runner == "SequentialRunner" else f" · {runner}"
    assert run.info.run_name == f"evaluate · smoke · seed 0{shown}"  # evaluate.fd_clf.seed
    assert run.data.tags["kedro.runner"] == runner and run.data.tags["maskdm.version"] == __version__
    on_disk = (root / "data" / "08_reporting" / "metrics.json").read_bytes()
    written = json.loads(on_disk)
    expected = tracking.quality_metrics(written)
    assert expected and {k: run.data.metrics.get(k) for k in expected} == expected
    assert written["maskdm"]["fd_clf"] != STALE and run.data.metrics["maskdm.fd_clf"] != STALE
    settings = tracking.quality_params(written)  # the sampler's settings, sample counts: parameters
    assert settings and {k: run.data.params.get(k) for k in settings} == settings
    assert not set(settings) & set(run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "reports")] == [  # what evaluate wrote
        "reports/baseline_guidance_sweep.json", "reports/maskdm_guidance_sweep.json", "reports/metrics.json"]
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    folder = root / "mlruns" / experiment.name
    assert experiment.artifact_location == run.info.artifact_uri.rsplit("/", 2)[0] == folder.as_uri()
    assert (folder / run.info.run_id / "artifacts" / "reports" / "metrics.json").read_bytes() == on_disk


def test_a_copied_project_writes_nothing_into_the_original(evaluate_runs: dict[str, tuple[Path, str]],
                                                           smoke_run: Path) -> None:
    """Each copy's store recorded the original's mlruns/ (a `cp -r` of a finished project): the
    copies' runs went into their own, the original's holds only its own runs' folders, and the
    run the copies inherited now points at the copy of its files."""
    from mlflow.tracking import MlflowClient

    original = MlflowClient(tracking_uri=f"sqlite:///{smoke_run / 'mlflow.db'}")
    own = {r.info.run_id for r in original.search_runs([original.get_experiment_by_name("maskdm_pipeline")
                                                         .experiment_id])}
    folders = {p.name for p in (smoke_run / "mlruns" / "maskdm_pipeline").iterdir() if p.name != "models"}
    assert folders <= own
    root, output = evaluate_runs["ThreadRunner"]
    assert "MLflow: the store kept experiment 'maskdm_pipeline'" in output, output[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    inherited = client.get_run(sorted(own)[0])
    assert inherited.info.artifact_uri.startswith((root / "mlruns").as_uri())
    assert client.list_artifacts(inherited.info.run_id, "reports")


def test_a_run_started_in_notebooks_uses_only_the_project_root(evaluate_runs: dict[str, tuple[Path, str]]) -> None:
    """From notebooks/: the relative path parameter, the log file of conf/logging.yml, the MLflow
    store and the folder of the experiment it creates are all under the project root; nothing is
    written into notebooks/."""
    root, output = evaluate_runs[FROM_NOTEBOOKS]
    assert f"weights_path={root / WEIGHTS} (no such file)" in output, output[-3000:]
    names = sorted(p.name for p in (PROJECT_ROOT / "notebooks").iterdir())
    assert sorted(p.name for p in (root / "notebooks").iterdir()) == names
    assert "maskdm_pipeline.pipelines.evaluate.nodes - WARNING - FID unavailable" in (root / "info.log").read_text()
    client, experiment, run = _latest_run(root, "from_notebooks")
    assert experiment.artifact_location == (root / "mlruns" / "from_notebooks").as_uri()
    assert (root / "mlruns" / "from_notebooks" / run.info.run_id / "artifacts" / "reports" / "metrics.json").is_file()
