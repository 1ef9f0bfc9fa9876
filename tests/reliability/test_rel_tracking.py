"""The MLflow store of a project that was moved, copied or reconfigured: MLflow records the folder
of an experiment, of each run and of each logged model as an absolute location, and writes every
artifact there, so the store a project carries along must follow the project (docs/reliability.md
"MLflow"). A real store (MLflow's own schema, the session's empty ``mlflow_db``); the copied
project under every runner: tests/pipelines/test_runners.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kedro_project import subprocess_env

from maskdm_pipeline.tracking.mlflow_store import follow_artifact_location

pytestmark = pytest.mark.slow  # the session's MLflow store costs ~10 s to create


# Another copy of the project made the store, in a process of its own (MLflow caches each run's
# and model's file location per process).
_MAKE = """
import json, shutil, sys
from pathlib import Path
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

root, store = Path(sys.argv[1]), sys.argv[2]
root.mkdir()
shutil.copy(store, root / "mlflow.db")
client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
folder = (root / "mlruns" / "maskdm_pipeline").as_uri()
experiment = client.create_experiment("maskdm_pipeline", artifact_location=folder)
with_files, without = (client.create_run(experiment).info.run_id for _ in range(2))
(root / "report.md").write_text("# the report\\n")
client.log_artifact(with_files, str(root / "report.md"), artifact_path="reports")
model = client.create_logged_model(experiment, name="finetuned", source_run_id=with_files)
(root / "model").mkdir()
(root / "model" / "MLmodel").write_text("flavors: {}\\n")
client.log_model_artifacts(model.model_id, str(root / "model"))
client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
print(json.dumps([experiment, with_files, without, model.model_id]))
"""


def _project(root: Path, mlflow_db: Path) -> tuple[str, str, str, str]:
    """A project folder whose store has an experiment in ``root/mlruns/maskdm_pipeline``, a run
    with an artifact, a run without any and a logged model with its files: (experiment id, the
    two run ids, the model id)."""
    done = subprocess.run([sys.executable, "-c", _MAKE, str(root), str(mlflow_db)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_moved_project_points_its_store_at_its_own_folder(mlflow_db: Path, tmp_path: Path) -> None:
    """The experiment, its runs (with files or none) and its logged model follow the move, the
    files read back through MLflow, and a second call finds nothing to do. Then the user changes
    ``tracking.experiment.artifact_location``: new runs go where it says now, and a run whose
    files are at the old place keeps pointing there."""
    from mlflow.tracking import MlflowClient

    experiment, with_files, without, model_id = _project(tmp_path / "before", mlflow_db)
    root = tmp_path / "after"
    (tmp_path / "before").rename(root)
    uri, wanted = f"sqlite:///{root / 'mlflow.db'}", (root / "mlruns" / "maskdm_pipeline").as_uri()
    client = MlflowClient(tracking_uri=uri)
    recorded = client.get_experiment(experiment).artifact_location
    assert recorded == (tmp_path / "before" / "mlruns" / "maskdm_pipeline").as_uri()
    assert follow_artifact_location(uri, experiment, recorded, wanted) == 3
    assert client.get_experiment(experiment).artifact_location == wanted
    for run_id in (with_files, without):
        assert client.get_run(run_id).info.artifact_uri == f"{wanted}/{run_id}/artifacts"
    assert client.get_logged_model(model_id).artifact_location == f"{wanted}/models/{model_id}/artifacts"
    report = client.download_artifacts(with_files, "reports/report.md", str(tmp_path))
    assert Path(report).read_text() == "# the report\n"
    assert [a.path for a in client.list_logged_model_artifacts(model_id)] == ["MLmodel"]
    assert follow_artifact_location(uri, experiment, wanted, wanted) is None
    # A new run of the experiment writes under the project as it is now.
    new = client.create_run(experiment).info
    assert new.artifact_uri == f"{wanted}/{new.run_id}/artifacts"

    new_place = (tmp_path / "bigdisk" / "maskdm_pipeline").as_uri()
    assert follow_artifact_location(uri, experiment, wanted, new_place) == 2  # the runs without files
    assert client.get_run(with_files).info.artifact_uri == f"{wanted}/{with_files}/artifacts"
    assert client.get_run(without).info.artifact_uri == f"{new_place}/{without}/artifacts"
    assert client.list_artifacts(with_files, "reports")
    newer = client.create_run(experiment).info
    assert newer.artifact_uri == f"{new_place}/{newer.run_id}/artifacts"
