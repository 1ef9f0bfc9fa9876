"""Project hooks: refuse a run whose nodes need a GPU this machine lacks, before any node runs;
release a training stage's resume slot once its final checkpoint is saved; remove what killed
writes left behind. The MLflow hook is in
:mod:`maskdm_pipeline.tracking.mlflow_hook`; the parameters are validated as the context is made
(:class:`maskdm_pipeline.project.ProjectContext`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class CheckpointSlotHook:
    """Owns the life of each training stage's resume slot (``<stage>_resume`` in the catalog).

    The engine writes the finished state to the slot as well as returning it (training/loop.py),
    so that if the catalog cannot save the final checkpoint (a full disk), the finished state is
    still on disk and a rerun saves it without training again (docs/reliability.md "Disk and
    folders"). Once the final checkpoint is saved, the slot is cleared, so that the next run of the
    stage starts afresh instead of "resuming" a finished run with new settings. The node that
    loaded a slot and saved a ``maskdm-checkpoint/1`` output is the link, so the resume path is
    declared once, in the slot's catalog entry.
    """

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}  # node name -> the CheckpointSlot it loaded
        self._saving: dict[str, Any] = {}  # final saves started, not yet finished

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node: Any) -> None:
        # Imported here: settings.py imports this module for every kedro command, torch is heavy.
        from maskdm_pipeline.datasets.checkpoint import CheckpointSlot

        if isinstance(data, CheckpointSlot):
            self._slots[node.name] = data

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        from maskdm_pipeline.fileio import is_checkpoint

        if node.name in self._slots and is_checkpoint(data):
            self._saving[node.name] = self._slots[node.name]

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node: Any) -> None:
        slot = self._saving.pop(node.name, None)
        if slot is not None:
            slot.clear()
            self._slots.pop(node.name, None)

    @hook_impl
    def on_pipeline_error(self, error: BaseException) -> None:
        """A final save that failed: say where the finished state is and how to recover."""
        for slot in self._saving.values():
            if slot.exists() and hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(
                    f"The finished training state is still in {slot.path} (it is deleted only "
                    "after the final checkpoint is written): free some space or fix the folder, "
                    "then rerun the same command; it saves without training again."
                )
        self._saving.clear()


class TemporaryFilesHook:
    """Every run starts by removing the hidden temporaries that killed writes left beside (and
    inside) the catalog's files and folders: ``atomic.atomic_write`` writes aside and swaps in,
    and a ``kill -9`` during a save leaves its ``.<name>.<pid>@<host>-<random>.tmp`` behind. Only
    those whose writer is gone are removed (``atomic.remove_stale_temporaries``): on this machine
    a writer whose process is gone; on another machine (the nodes of a job on a shared folder) one
    that holds no live lease in the run lock this run holds (``runlock.RunLock.foreign_writer_gone``)
    and whose temporary has not changed for a lease. Folders are not searched below their first
    level (a folder of raw images can be large). A linked output (a folder on another disk) is written
    beside the link's target, so that folder is searched too."""

    @hook_impl
    def before_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        from maskdm_pipeline import runlock
        from maskdm_pipeline.atomic import remove_stale_temporaries
        from maskdm_pipeline.caching.records import dataset_path

        folders: set[Path] = set()
        for name in sorted(set(catalog.keys()) | set(pipeline.datasets())):
            path = dataset_path(catalog.get(name))
            if path is not None:
                folders.update((path.parent, path) if path.is_dir() else (path.parent,))
                folders.add(Path(os.path.realpath(path)).parent)  # where atomic_write puts a linked output's
        lock = runlock.current()
        foreign = None if lock is None else lock.foreign_writer_gone()
        for folder in sorted(folders):
            for removed in remove_stale_temporaries(folder, foreign):
                logger.info("Removed %s, left by a write that was killed before it finished.", removed)


class DeviceCheckHook:
    """Refuses, before any node runs, a ``kedro run`` whose nodes compute on a device this machine
    lacks (``trainer.device: cuda`` without a GPU, more ``trainer.nproc`` than GPUs), with the
    one ``Error:`` line of :meth:`TrainerConfig.check_hardware`.

    Only runs that include a node reading ``params:trainer`` (training, sampling, evaluation) are
    checked: a GPU configuration still validates and preprocesses on a laptop
    (``--pipelines preprocess``). Checked as the run starts, and first among the hooks
    (``tryfirst``), so that no MLflow run is opened for a run that cannot start; the parameter
    schema cannot do it, as it does not know which nodes will run.
    """

    def __init__(self) -> None:
        self._trainer: Any = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._trainer = context.validated_params.trainer

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Any) -> None:
        from maskdm_pipeline.params import ParameterError

        if self._trainer is None or not any("params:trainer" in node.inputs for node in pipeline.nodes):
            return
        try:
            self._trainer.check_hardware()
        except ValueError as exc:
            raise ParameterError(f"{exc}. Nothing was run.") from None
