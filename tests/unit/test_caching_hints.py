"""The line a failed ``kedro run`` logs about going on (caching/hints.py): given only where a
rerun can go on, and never telling the user to repeat a ``cache.rerun`` that would redo a stage
that finished in the failed run."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.io import DatasetError

from maskdm_pipeline.caching.hints import command_without_rerun, go_on_hint
from maskdm_pipeline.console import UsageMistake
from maskdm_pipeline.datasets.errors import UnreadableFileError
from maskdm_pipeline.params import ParameterError
from maskdm_pipeline.train_stage import InputsDoNotFit, StageInterrupted, StageNodesError

SAME = "To go on, rerun the same command: what finished is skipped as up to date."
KEDRO = "/venv/bin/kedro"


def _interrupted() -> StageInterrupted:
    return StageInterrupted("finetune: stopped by SIGINT after step 57/300", step=57,
                            checkpoint_path=Path("finetuned.resume.pt"))


def _wrapped(inner: Exception) -> DatasetError:
    try:
        raise DatasetError(f"pretrained: {inner}") from inner
    except DatasetError as error:
        return error


@pytest.mark.parametrize("error", [
    StageNodesError("pretrain: trainer.rdzv_endpoint=node0.invalid:29400: the host 'node0.invalid' cannot be resolved"),
    StageNodesError("pretrain: the 2 nodes were started with different parameters (pretrain.lr: ...)"),
    ParameterError("Invalid parameters, nothing was run:\n  - pretrain.steps=0: must be >= 1"),
    _wrapped(UnreadableFileError("data/01_raw/x.png is not an image")),
    InputsDoNotFit("finetune: the pre-trained checkpoint ... was made with other settings (...)"),
    UsageMistake("finetune cannot run on its inputs: pretrained ... does not exist. Make it first: ..."),
], ids=["unresolvable host", "differing nodes", "parameters", "bad input file", "inputs made otherwise",
        "input missing"])
def test_an_error_a_rerun_cannot_fix_gets_no_hint(error: Exception) -> None:
    assert go_on_hint(error, None, [], [KEDRO, "run"]) is None


@pytest.mark.parametrize("error", [_interrupted(), KeyboardInterrupt(), RuntimeError("CUDA out of memory")],
                         ids=["stage interrupted", "Ctrl-C elsewhere", "crash mid-stage"])
def test_an_interruption_or_a_crash_gets_the_same_command(error: BaseException) -> None:
    assert go_on_hint(error, None, [], [KEDRO, "run"]) == SAME
    # cache.rerun given, but the stage it forces had not finished: forcing it again is still wanted
    assert go_on_hint(error, "finetune", [], [KEDRO, "run", "--params", "cache.rerun=finetune"]) == SAME


def test_after_a_forced_stage_finished_the_hint_names_the_command_without_cache_rerun() -> None:
    argv = [KEDRO, "run", "--env", "smoke", "--params", "cache.rerun=baseline,trainer.nproc=2"]
    hint = go_on_hint(_interrupted(), "baseline", ["baseline"], argv)
    assert hint == ("To go on, rerun without cache.rerun=baseline, which would redo baseline again "
                    "(`kedro run --env smoke --params trainer.nproc=2`): what finished is skipped as up to date.")
    everything = go_on_hint(KeyboardInterrupt(), "all", ["preprocess", "pretrain"],
                            [KEDRO, "run", "--params=cache.rerun=all"])
    assert everything == ("To go on, rerun without cache.rerun=all, which would redo preprocess, pretrain again "
                          "(`kedro run`): what finished is skipped as up to date; the stages cache.rerun=all had "
                          "not reached then run only if they are out of date.")
    # set in conf/, not on the command line: the key is named, no command
    hint = go_on_hint(_interrupted(), "baseline", ["baseline"], [KEDRO, "run"])
    assert hint is not None and "(`" not in hint and "without cache.rerun=baseline" in hint
    # a user error after the forced stage finished: no "rerun the same command", but leave the key out
    hint = go_on_hint(StageNodesError("finetune: ..."), "pretrain", ["pretrain"],
                      [KEDRO, "run", "--params", "cache.rerun=pretrain"])
    assert hint == "When you rerun, leave out cache.rerun=pretrain (`kedro run`): it would redo pretrain again."


def test_command_without_rerun() -> None:
    assert command_without_rerun([KEDRO, "run", "--params", "a.b=1, cache.rerun=x ,c.d=[2]", "--env", "e"]) == \
        "kedro run --params 'a.b=1,c.d=[2]' --env e"
    assert command_without_rerun([KEDRO, "run", "--params", "a.b=1"]) is None  # nothing to leave out
    assert command_without_rerun(["/usr/bin/python", "-m", "kedro", "run"]) is None  # not the command typed
