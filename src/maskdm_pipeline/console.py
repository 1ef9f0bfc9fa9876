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
import sys

# The layout of conf/logging.yml's `simple` formatter (info.log), so a piped log reads the same.
PLAIN_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


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
