"""A quiet console (issue 12 item 6): no warning users can do nothing about, Kedro's dataset
naming, and log records that stay whole in a file or pipe (rich layout only on a terminal).

The CLI outputs are read exactly as a user's pipe gets them: ``subprocess_env`` sets neither
``COLUMNS`` nor ``PYTHONWARNINGS``.
"""

from __future__ import annotations

import importlib
import io
import logging
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.logging import RichHandler

from maskdm_pipeline.console import plain_logs_unless_terminal

KEDRO_WARNINGS = {
    "dataset names contain '.'": "contain '.' characters",
    "OmegaConf's register_new_resolver deprecation": "register_new_resolver",
}
STAGES = ("preprocess", "pretrain", "finetune", "baseline", "sample", "evaluate", "report")
RICH_LAYOUT = re.compile(r"[╭╰│]|^\s{10,}\S", re.MULTILINE)  # rich boxes, rich's wrapped continuation lines


def _line_with(text: str, needle: str) -> str:
    lines = [line for line in text.splitlines() if needle in line]
    assert lines, f"{needle!r} is not in the output:\n{text[-3000:]}"
    return lines[0]


def test_smoke_run_output_is_quiet_and_one_line_per_record(smoke_run: Path) -> None:
    """`kedro run --env smoke` into a pipe, without COLUMNS: no Kedro/OmegaConf warning, no rich
    layout, and long records (a path, the FID explanation, Kedro's first line) each on one line."""
    log = (smoke_run / "run.log").read_text()
    for what, text in KEDRO_WARNINGS.items():
        assert text not in log, what
    assert not RICH_LAYOUT.search(log), RICH_LAYOUT.search(log)
    resume = smoke_run / "data" / "06_models" / "pretrained.resume.pt"
    line = _line_with(log, "pretrain step 10/30: periodic checkpoint saved")
    assert line.endswith(f"saved to {resume}") and len(line) > 80, line
    fid = _line_with(log, "FID unavailable, reported as null.")
    assert "FID is never computed with other weights." in fid and len(fid) > 300
    # Kedro's first record, written before the project loads (its own plain handler in conf/logging.yml).
    first = _line_with(log, "Using 'conf/logging.yml' as logging configuration.")
    assert first.endswith("KEDRO_LOGGING_CONFIG environment variable accordingly."), first


def test_dotted_dataset_names_only_inside_their_namespace() -> None:
    """Kedro's rule (kedro/pipeline/node.py, _node_dataset_name_validation): a dataset name with a
    '.' is a namespace's own, used only by nodes of that namespace."""
    offenders = set()
    for name in STAGES:
        pipe = importlib.import_module(f"maskdm_pipeline.pipelines.{name}").create_pipeline()
        for node in pipe.nodes:
            for dataset in node.inputs + node.outputs:
                if "." in dataset and not dataset.startswith("params:"):
                    top = (node.namespace or "").split(".")[0]
                    if not top or not dataset.startswith(top + "."):
                        offenders.add((name, node.name, dataset))
    assert not offenders


@pytest.fixture
def logger(monkeypatch: pytest.MonkeyPatch) -> logging.Logger:
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    return logging.Logger("maskdm_pipeline.test_console")  # outside logging's tree: no other handlers


def _rich(console: Console) -> RichHandler:
    handler = RichHandler(console=console, level=logging.INFO)
    handler.addFilter(logging.Filter("maskdm_pipeline"))
    return handler


def test_rich_handler_on_a_pipe_becomes_one_plain_line_per_record(logger: logging.Logger) -> None:
    stream = io.StringIO()
    rich = _rich(Console(file=stream, width=80))
    logger.addHandler(rich)
    sys.excepthook = lambda *args: None
    sys.excepthook.__module__ = "rich.traceback"  # what rich.traceback.install leaves behind
    assert plain_logs_unless_terminal(logger)
    (plain,) = logger.handlers
    assert type(plain) is logging.StreamHandler and plain.stream is stream
    assert plain.level == logging.INFO and plain.filters == rich.filters
    assert sys.excepthook is sys.__excepthook__
    path = "/a/rather/long/folder/" + "x" * 120 + "/pretrained.resume.pt"
    logger.info("periodic checkpoint saved to %s", path)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(f"- maskdm_pipeline.test_console - INFO - periodic checkpoint saved to {path}")


@pytest.mark.parametrize("console", [{"force_terminal": True}, {"force_jupyter": True}], ids=["terminal", "notebook"])
def test_rich_stays_on_a_terminal_and_in_a_notebook(logger: logging.Logger, console: dict) -> None:
    rich = _rich(Console(file=io.StringIO(), **console))
    logger.addHandler(rich)
    hook = sys.excepthook
    assert not plain_logs_unless_terminal(logger)
    assert logger.handlers == [rich] and sys.excepthook is hook


# ----------------------------------------------------------------------------- errors written for the user
def test_an_error_for_the_user_ends_in_one_line_even_when_kedro_wraps_it(monkeypatch, capsys) -> None:
    """Kedro's catalog rewraps a dataset's error in its own DatasetError, which click prints as a
    traceback; the project's excepthook prints the outermost message, with its notes, for any
    chain that holds a ClickException, and leaves every other exception to the hook before it."""
    from click import ClickException
    from kedro.io import DatasetError

    from maskdm_pipeline.console import one_line_user_errors, user_error_in
    from maskdm_pipeline.datasets.errors import UnreadableFileError

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: seen.append(args[1]))
    one_line_user_errors()
    try:
        try:
            raise UnreadableFileError("checkpoint /p/x.pt is corrupted. Delete it")
        except DatasetError as inner:
            raise DatasetError(f"pretrained: {inner}") from inner
    except DatasetError as outer:
        outer.add_note("a note")
        sys.excepthook(type(outer), outer, outer.__traceback__)
    assert capsys.readouterr().err == "Error: pretrained: checkpoint /p/x.pt is corrupted. Delete it\na note\n"
    other = RuntimeError("a bug")
    sys.excepthook(RuntimeError, other, None)
    assert seen == [other] and not user_error_in(other)
    assert user_error_in(ClickException("plain"))


def test_an_error_for_the_user_from_a_worker_process_is_recognised_by_its_class_name() -> None:
    """ParallelRunner's error arrives without its chain: concurrent.futures attaches the worker's
    formatted traceback as the cause, which names the exception classes."""
    import maskdm_pipeline.datasets.errors  # noqa: F401 - imported in the main process too
    from maskdm_pipeline.console import user_error_in

    class _RemoteTraceback(Exception):  # concurrent.futures.process's own name
        pass

    def remote(text: str) -> BaseException:
        error = RuntimeError("finetuned: cannot read")
        error.__cause__ = _RemoteTraceback(text)
        return error

    assert user_error_in(remote('\n"""\nTraceback ...\nmaskdm_pipeline.datasets.errors.UnreadableFileError: x\n"""'))
    assert not user_error_in(remote('\n"""\nTraceback ...\nkedro.io.core.DatasetError: x\n"""'))
