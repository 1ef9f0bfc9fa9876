"""What a run prints: rich on a terminal, one plain full-width line per record in a file or pipe.

Kedro lays every log record out with rich (``conf/logging.yml``, handler ``rich``). Rich fits
the layout to the console, and a console that is not a terminal (``kedro run > run.log``, a
pipe, a CI job) is 80 columns wide unless ``COLUMNS`` says otherwise: messages, paths and the
final error were wrapped and cut into pieces that ``grep`` cannot find.

The choice cannot be made in ``conf/logging.yml`` alone: Kedro applies that file before any
project code runs and accepts handler classes only from ``logging`` and ``kedro.logging`` (or
modules a user lists in ``KEDRO_LOGGING_MODULE_ALLOWLIST``), and none of those picks its layout
by whether the output is a terminal. So ``settings.py`` calls :func:`plain_logs_unless_terminal`
as soon as the project loads. The one record Kedro writes before that (which logging file it
uses) has its own plain handler in ``conf/logging.yml``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

from click import ClickException, echo

# The layout of conf/logging.yml's `simple` formatter (info.log), so a piped log reads the same.
PLAIN_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LISTED = 12  # up to this many valid names are listed whole; above it, the closest ones


class UsageMistake(ClickException, ValueError):
    """Something the user named (on the command line or in ``conf/``) that does not exist or
    does not fit: one line that says what was wrong and what is valid, exit status 2 (a usage
    error, as for parameters: ``params.ParameterError``), raised before anything runs.

    A ``click.ClickException``: ``kedro run`` prints ``Error: <message>`` and exits with
    ``exit_code``, also when the error is raised inside Kedro's session (click handles it around
    the command). A ``ValueError`` for Python callers (a notebook's ``session.run``). The message
    is kept on one line: every run of whitespace becomes one space.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def choices(given: str, valid: Iterable[str], what: str = "choices", listed_by: str = "") -> str:
    """What to say after ``<given> is not a <thing>; ``: ``did you mean <the closest>?`` when one
    is close (the parameter schema's close match, ``params.closest``), then the valid names, all
    of them up to :data:`LISTED` (``the <what>: a, b, c``), else the three closest by difflib's
    own cutoff and the command that lists them all (``listed_by``). E.g. ``did you mean pretrain?
    the pipelines: __default__, baseline, ...``."""
    import difflib

    from maskdm_pipeline.params import closest

    names = list(dict.fromkeys(valid))
    if not names:
        return f"there are no {what} to choose from"
    close = closest(given, names)
    parts = [f"did you mean {close[0]}?"] if close else []
    if len(names) <= LISTED:
        parts.append(f"the {what}: {', '.join(names)}")
    else:
        near = [] if close else difflib.get_close_matches(given, names, n=3)
        if near:
            parts.append(f"the closest {what}: {', '.join(near)}")
        parts.append(f"{listed_by} lists them all" if listed_by else f"{len(names)} {what} to choose from")
    return "; ".join(parts).replace("?; ", "? ")


def plain_logs_unless_terminal(logger: logging.Logger | None = None) -> bool:
    """Swap each rich handler of ``logger`` (default: the root logger) whose console is neither a
    terminal nor a notebook for a plain ``StreamHandler`` on the same stream, level and filters,
    and give uncaught exceptions Python's own full-width traceback instead of rich's boxed one.

    Rich's own test decides what a terminal is, so ``FORCE_COLOR`` / ``TTY_COMPATIBLE`` keep rich
    in a pipe. Returns True if a handler was swapped; a no-op on any other logging setup.
    """
    from rich.logging import RichHandler  # rich comes with Kedro

    logger = logger or logging.getLogger()
    swapped = False
    for handler in list(logger.handlers):
        if not isinstance(handler, RichHandler) or handler.console.is_terminal or handler.console.is_jupyter:
            continue
        plain = logging.StreamHandler(handler.console.file)
        plain.setLevel(handler.level)
        plain.setFormatter(logging.Formatter(PLAIN_FORMAT))
        for log_filter in handler.filters:
            plain.addFilter(log_filter)
        logger.removeHandler(handler)
        logger.addHandler(plain)
        swapped = True
    if swapped and getattr(sys.excepthook, "__module__", None) == "rich.traceback":
        sys.excepthook = sys.__excepthook__  # installed by kedro.logging.RichHandler(rich_tracebacks=True)
    return swapped


def user_error_in(error: BaseException) -> bool:
    """Whether a ``click.ClickException`` (an error written for the user) caused ``error``:
    ``error`` itself or one of its ``__cause__``\\ s (see :func:`caused_by`)."""
    return caused_by(error, (ClickException,))


def caused_by(error: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``error`` or one of its ``__cause__``\\ s is an instance of one of ``kinds``.

    An error from another process (Kedro's ``ParallelRunner``) arrives without its chain, with
    the worker's formatted traceback as its cause (``concurrent.futures``); there the chain is
    read by the names of its exception classes, among those already imported.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return True
        if type(current).__name__ == "_RemoteTraceback":
            return any(_is_class_of(name, kinds) for name in _RAISED.findall(str(current)))
        seen.add(id(current))
        current = current.__cause__
    return False


_RAISED = re.compile(r"^([A-Za-z_][\w.]*\.[A-Za-z_]\w*):", re.MULTILINE)  # "package.module.Class: message"


def _is_class_of(dotted: str, kinds: tuple[type[BaseException], ...]) -> bool:
    module, _, name = dotted.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and issubclass(cls, kinds)


def one_line_user_errors() -> None:
    """An uncaught exception caused by an error written for the user ends the command with one
    ``Error: <message>`` line on stderr (and its notes), as click prints a ``ClickException``;
    any other exception keeps the traceback of the hook installed before.

    Why: click prints a ``ClickException`` raised by a node as one line, but one raised while
    the catalog loads a node's inputs (a damaged checkpoint) reaches the user wrapped in Kedro's
    own ``DatasetError``, which click does not know, so the message came at the end of a screen
    of traceback. The message shown is the outermost one: Kedro's adds the catalog entry's name.
    The exit status stays 1, Python's for an uncaught exception.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if not user_error_in(error):
            previous(kind, error, tb)
            return
        lines = [f"Error: {error}", *getattr(error, "__notes__", [])]
        echo("\n".join(lines), err=True)

    sys.excepthook = hook
