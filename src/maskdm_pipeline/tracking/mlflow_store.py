"""What the MLflow hook writes into the store besides keys and values: where the store says the
project keeps its files, the image sets as dataset inputs, and the trained models as logged
models. Called by :class:`~maskdm_pipeline.tracking.mlflow_hook.MlflowTrackingHook` (when), with
what :mod:`maskdm_pipeline.tracking.logged` decided (what); every call goes through an
``MlflowClient`` and a run's id, never MLflow's fluent API (its active run is per thread and per
process: see the hook).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from maskdm_pipeline import tracking

logger = logging.getLogger("maskdm_pipeline.tracking.mlflow_hook")  # the hook's voice: one logger for MLflow

# MLflow's stores kept in a SQL database (``sqlite:///mlflow.db``, ``postgresql://...``): the
# only ones where the project can correct a location recorded by another copy of itself.
_DATABASES = ("sqlite", "postgresql", "mysql", "mssql")


def tracking_uri(uri: str, root: Path) -> str:
    """The store of ``server.mlflow_tracking_uri`` (``uri``): a relative ``sqlite:///mlflow.db``
    is relative to the project ``root``, wherever Kedro is started from (a notebook in
    notebooks/ must not create a second store there)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(root / uri[len(prefix):])
    return uri


def artifact_location(location: str, root: Path, name: str) -> str:
    """Where the experiment ``name`` keeps its files: ``<location>/<name>``, ``location`` being
    ``tracking.experiment.artifact_location`` (``mlruns`` by default), a folder (relative: to the
    project ``root``; MLflow would take its default relative to the working directory) or a URI."""
    if "://" in location:
        return f"{location.rstrip('/')}/{name}"
    path = Path(location).expanduser()
    folder = path if path.is_absolute() else root / path
    return (folder / re.sub(r"[^\w.-]+", "_", name)).as_uri()


def local_folder(uri: str) -> Path | None:
    """The folder of a ``file:`` URI (or a plain path); None for a remote one (``s3://``, ...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if not parsed.scheme or len(parsed.scheme) == 1 else None  # "C:" is a drive


def _same(a: str, b: str) -> bool:
    folder_a, folder_b = local_folder(a), local_folder(b)
    if folder_a is None or folder_b is None:
        return a.rstrip("/") == b.rstrip("/")
    return folder_a.resolve() == folder_b.resolve()


def follow_artifact_location(tracking_uri: str, experiment_id: str, recorded: str, wanted: str) -> int | None:
    """Make the store say that ``experiment_id`` keeps its files at ``wanted`` (the location the
    project's configuration gives now: ``tracking.experiment.artifact_location``, under the
    project root) when it recorded ``recorded``; None when they are the same folder already,
    else the number of earlier runs and logged models of the experiment now pointed under
    ``wanted`` too: those whose folders are there (copied or moved along with the project) or
    nowhere; one whose files are only at the old place (the user changed the setting) keeps it.

    Why: MLflow records an experiment's folder, and each run's, as an absolute location when it
    creates them, and then writes every artifact there. A project copied with ``cp -r`` (the
    tests' and experiments' copies too) or moved keeps that record in its ``mlflow.db``, so its
    runs would write into the original's ``mlruns/`` (or into a folder that is gone). MLflow has no
    call that changes a recorded location (an experiment's ``artifact_location`` is set once, by
    ``create_experiment``), so the store's own tables are updated here, in one transaction,
    through SQLAlchemy (MLflow's own database layer): ``experiments.artifact_location``,
    ``runs.artifact_uri`` and ``logged_models.artifact_location``, the columns MLflow's schema
    has kept since they were introduced (checked on the installed MLflow by
    tests/unit/test_tracking_store.py). A store on a tracking server decides its locations
    itself and is left alone.
    """
    if _same(recorded, wanted) or urlparse(tracking_uri).scheme.split("+")[0] not in _DATABASES:
        return None
    import sqlalchemy

    old, new = recorded.rstrip("/"), wanted.rstrip("/")
    moved = 0
    engine = sqlalchemy.create_engine(tracking_uri)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("UPDATE experiments SET artifact_location = :new WHERE experiment_id = "
                                               ":id"), {"new": new, "id": int(experiment_id)})
            for table, key, column in (("runs", "run_uuid", "artifact_uri"),
                                       ("logged_models", "model_id", "artifact_location")):
                rows = connection.execute(sqlalchemy.text(f"SELECT {key}, {column} FROM {table} WHERE experiment_id "
                                                          "= :id"), {"id": int(experiment_id)}).fetchall()
                for row_id, location in rows:
                    if not location or not location.startswith(old + "/"):
                        continue  # somewhere else already (a location the user gave it)
                    there, before = new + location[len(old):], local_folder(location)
                    folder = local_folder(there)
                    # Its files came along (a copy, a move), or they are nowhere (a run that logged
                    # none, a moved project): here. Only files kept at the old place stay there.
                    if folder is not None and (folder.exists() or (before is not None and not before.exists())):
                        connection.execute(sqlalchemy.text(f"UPDATE {table} SET {column} = :there WHERE {key} = :id"),
                                           {"there": there, "id": row_id})
                        moved += 1
    finally:
        engine.dispose()
    return moved


def image_set(name: str, folder: Path, card: Path | None, shown: Callable[[Path], str]) -> dict[str, Any] | None:
    """The dataset input of the shard folder ``folder`` (the catalog's ``name``):
    :func:`maskdm_pipeline.tracking.logged.dataset_input` of its ``index.json`` and, for the
    training split, the dataset card at ``card``; ``shown(folder)``: its source as the log shows
    it. None for an empty folder or one without a readable index (nothing to log)."""
    from maskdm_pipeline.shards.format import INDEX

    index = _read_json(folder / INDEX)
    if index is None:
        return None
    card_data = _read_json(card) if card is not None and name == "primary_train" else None
    return tracking.dataset_input(name, index, card_data, shown(folder))


def _read_json(path: Path) -> Any:
    """A JSON file's content, None when it is missing or unreadable (nothing to log from it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_dataset_input(client: Any, run_id: str, spec: Mapping[str, Any]) -> None:
    """Log ``spec`` (:func:`maskdm_pipeline.tracking.logged.dataset_input`) as a dataset input of
    the run: MLflow's UI lists it under the run's "Datasets" with its digest, its profile (the
    counts) and its schema (the images' and labels' tensor specs, as ``mlflow.data``'s numpy
    datasets write theirs), and its ``mlflow.data.context`` tag."""
    import numpy as np
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    def schema(spec_: tuple[str, list[int]] | None, name: str) -> str | None:
        return None if spec_ is None else Schema([TensorSpec(np.dtype(spec_[0]), tuple(spec_[1]), name)]).to_json()

    tensors = {"features": schema(spec["features"], "images"), "targets": schema(spec["targets"], "labels")}
    dataset = Dataset(name=spec["name"], digest=spec["digest"], source_type="local",
                      source=json.dumps({"uri": spec["source"]}), schema=json.dumps({"mlflow_tensorspec": tensors}),
                      profile=json.dumps(spec["profile"]))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT,
                                                                              spec["context"])])])


def log_checkpoint_model(client: Any, run: Any, name: str, dataset: Any, shown: str) -> str | None:
    """Log the checkpoint that ``dataset`` (the catalog's ``name``, at ``shown``) holds as a logged
    model of ``run`` (:func:`log_model`), say so in the log and return its id. A model MLflow
    cannot save gives one warning and None, no error: the rest of the run is still tracked."""
    state = dataset.load()
    try:
        model_id = log_model(client, run, name, state, tracking.model_params(state["config"]))
    except Exception as exc:  # noqa: BLE001 - one model lost to MLflow, never the run nor its tracking
        text = str(exc).strip()
        logger.warning("MLflow: the model %s was not logged (%s: %s); the run goes on and %s is kept. Set "
                       "tracking.%s: false in conf/*/mlflow.yml to stop logging models.", name, type(exc).__name__,
                       text.splitlines()[0] if text else "", shown, tracking.LOG_MODELS_SETTING)
        return None
    logger.info("MLflow: logged model %s (%s, step %s): mlflow.pytorch.load_model('models:/%s')", name, shown,
                state["step"], model_id)
    return model_id


def log_model(client: Any, run: Any, name: str, state: Mapping[str, Any], params: Mapping[str, str]) -> str:
    """Log the EMA model of the checkpoint ``state`` (a ``maskdm-checkpoint/1`` dict, fileio.py)
    as an MLflow logged model of ``run`` named ``name``, an output of the run at the checkpoint's
    step, and return its id: what ``mlflow.pytorch.log_model`` does for the fluent API's active
    run (MLflow 3's logged models), through the client.

    The model is saved with MLflow's PyTorch flavour in its ``pt2`` format (``torch.export``):
    ``mlflow.pytorch.load_model("models:/<id>")`` gives a module ``(x_t float (B, C, H, W), t
    int64 (B,)) -> (B, C, H, W)``, the unmasked prediction of the checkpoint's EMA weights, with
    torch alone (no pickle, so loading runs no code and needs no maskdm_pipeline), batch size
    free. ``params`` (:func:`~maskdm_pipeline.tracking.logged.model_params`: the config it was
    trained with) are the logged model's parameters, and the whole config is in its MLmodel
    metadata. A model whose saving fails is marked FAILED in the store, and the error raised.
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    from maskdm_pipeline.generation import model_from_checkpoint

    model = model_from_checkpoint(state)
    channels, size = model.in_chans, model.img_size
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, channels, size, size), "x_t"),
                                              TensorSpec(np.dtype("int64"), (-1,), "t")]))
    # Two rows: torch.export takes a dimension of size 1 as a constant, so the batch would be fixed.
    example = (torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0)),
               torch.tensor([0, 1], dtype=torch.int64))
    step = int(state["step"])
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run.info.run_id,
                                        params=dict(params), tags={"maskdm.step": str(step)},
                                        model_type="U-ViT diffusion (EMA weights)")
    try:
        client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step)])
        described = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                          run_id=run.info.run_id, model_id=logged.model_id)
        with tempfile.TemporaryDirectory(prefix="maskdm-model-") as scratch, torch.no_grad():
            folder = str(Path(scratch) / "model")
            mlflow.pytorch.save_model(model, folder, mlflow_model=described, serialization_format="pt2",
                                      input_example=example, signature=signature,
                                      pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
                                      metadata={"maskdm": {"step": step, "config": state["config"]}})
            client.log_model_artifacts(logged.model_id, folder)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id
