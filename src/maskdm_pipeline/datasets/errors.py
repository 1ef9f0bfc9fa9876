"""The errors a catalog entry raises when its file cannot be read or written."""

from __future__ import annotations

from click import ClickException
from kedro.io import DatasetError


class UnreadableFileError(DatasetError, ClickException):
    """A catalog file that is missing, truncated, corrupted or not what its entry expects; the
    message names the file, what is wrong and what to do.

    A ``DatasetError`` for Kedro, which wraps it in its own ``DatasetError("<entry>: ...")``
    before it leaves the catalog, and a ``click.ClickException`` (the project's mark of an error
    written for the user), which ``console.one_line_user_errors`` looks for in the chain of an
    uncaught exception: ``kedro run`` then ends with ``Error: <entry>: <message>`` instead of a
    screen of traceback with the message at its end.
    """


class UnwritableFileError(DatasetError, ClickException):
    """A catalog file or folder that cannot be written (a full disk, a read-only folder); the
    message names it, what was kept and what to do. One ``Error:`` line from ``kedro run``, for
    the same reason as :class:`UnreadableFileError`."""
