"""A training job's ``eval_fn`` that makes rank 0's worker process die one way, once, at a given
step (test_rel_workers.py). In a module of its own, light to import: each spawned worker imports it
to unpickle the ``functools.partial`` it is given."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import torch


def die_once(folder: str, how: str, at: int, step: int, ema_model: torch.nn.Module) -> None:
    """At step ``at``, unless ``folder/died`` exists (the restarted attempt passes): write it, then
    ``how`` = "kill" (SIGKILL, as the out-of-memory killer), "exit" (status 3) or "raise"
    (MemoryError). Every call first appends ``<attempt> <step> <EMA digest>`` to
    ``folder/ema.txt``: a bitwise trace of the run, attempt by attempt."""
    marker = Path(folder) / "died"
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in ema_model.parameters())).hexdigest()
    with open(Path(folder) / "ema.txt", "a") as trace:
        trace.write(f"{int(marker.exists())} {step} {digest}\n")
    if step != at or marker.exists():
        return None
    marker.touch()
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "exit":
        sys.exit(3)
    raise MemoryError(f"cannot allocate the batch of step {step}")
