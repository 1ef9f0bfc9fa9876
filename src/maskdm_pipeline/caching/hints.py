"""What a failed ``kedro run`` tells the user to do next about the cache: the one line that says
how to go on, true for the command the user actually ran.

Kedro's runner would suggest ``--from-nodes``; with the cache, rerunning the command is the way
on, since what finished is skipped as up to date. That holds only:

- where a rerun can go on: after an interruption (Ctrl-C, SIGTERM: the stage resumes) or a
  crash mid-stage (an error nobody wrote a message for). An error written for the user (a
  ``click.ClickException`` in its chain: parameters, endpoints, nodes that differ, unreadable
  input files) says itself what to change; rerunning the same command just fails again, so no
  hint is given there;
- without ``cache.rerun``: a stage it forced that finished in this run would be redone by the
  same command (after Ctrl-C under ``cache.rerun=baseline``, the finished baseline was trained
  again from scratch), so the hint then names the command without that key.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from maskdm_pipeline.console import caused_by, user_error_in

KEY = "cache.rerun"
GO_ON = "what finished is skipped as up to date"


def go_on_hint(error: BaseException, rerun: str | None, redone: Sequence[str], argv: Sequence[str]) -> str | None:
    """The line to log after ``error`` ended a run, or None where a rerun cannot go on.

    Args:
        error: what ended the run (as the runner caught it).
        rerun: the run's ``cache.rerun`` value (None: not given).
        redone: the stages ``cache.rerun`` forced that finished in this run, in order: the
            same command would run them again.
        argv: the command line (``sys.argv``), to name the command without ``cache.rerun``.
    """
    from maskdm_pipeline.training.job import TrainingInterrupted  # torch: only once a run failed

    interrupted = caused_by(error, (KeyboardInterrupt, TrainingInterrupted))
    if not interrupted and user_error_in(error):  # its message says what to change
        if rerun and redone:
            return (f"When you rerun, leave out {KEY}={rerun}{_shown(argv)}: it would redo "
                    f"{', '.join(redone)} again.")
        return None
    if not (rerun and redone):
        return f"To go on, rerun the same command: {GO_ON}."
    pending = (f"; the stages {KEY}={rerun} had not reached then run only if they are out of date"
               if rerun == "all" else "")
    return (f"To go on, rerun without {KEY}={rerun}, which would redo {', '.join(redone)} again"
            f"{_shown(argv)}: {GO_ON}{pending}.")


def _shown(argv: Sequence[str]) -> str:
    command = command_without_rerun(argv)
    return f" (`{command}`)" if command else ""


def command_without_rerun(argv: Sequence[str]) -> str | None:
    """``kedro run ...`` as typed, without the ``cache.rerun`` item of ``--params``; None when
    the command is not ``kedro`` or gives no ``cache.rerun`` (it is then set in conf/)."""
    if not argv or Path(argv[0]).name != "kedro":
        return None
    args, found, i = ["kedro"], False, 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--params" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--params="):
            value, i = arg.removeprefix("--params="), i + 1
        else:
            args.append(arg)
            i += 1
            continue
        # Kedro splits --params on every comma (kedro.framework.cli.utils.split_string)
        items = [item for item in value.split(",") if item.strip()]
        kept = [item for item in items if item.partition("=")[0].strip() != KEY]
        found |= len(kept) < len(items)
        if kept:
            args += ["--params", ",".join(kept)]
    return shlex.join(args) if found else None


# The options of `kedro run` that select what runs (with their short forms); they take a value.
SELECTION = ("--pipeline", "-p", "--pipelines", "--nodes", "-n", "--from-nodes", "--to-nodes", "--from-inputs",
             "--to-outputs", "--namespaces", "-ns", "--tags", "-t")


def command_with_pipelines(argv: Sequence[str], pipelines: Sequence[str] = ()) -> str:
    """``kedro run`` with the options typed in ``argv`` (``sys.argv``: ``kedro run ...`` or
    ``python -m maskdm_pipeline ...``) but its selection (:data:`SELECTION`), and ``--pipelines``
    set to ``pipelines`` when given: the command that runs those stages with the same settings
    (``--env``, ``--params``)."""
    options: list[str] = []
    if argv and Path(argv[0]).name == "kedro":
        options = list(argv[2:]) if argv[1:2] == ["run"] else []
    elif argv and Path(argv[0]).name == "__main__.py":
        options = list(argv[1:])
    kept, i = [], 0
    while i < len(options):
        arg = options[i]
        if arg in SELECTION:
            i += 2
            continue
        if not any(arg.startswith(f"{option}=") for option in SELECTION):
            kept.append(arg)
        i += 1
    return shlex.join(["kedro", "run", *kept, *(["--pipelines", ",".join(pipelines)] if pipelines else [])])
