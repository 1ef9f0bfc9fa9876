"""What the cache tells the user during a ``kedro run`` (logger ``maskdm_pipeline.caching``): one
``<stage>: up to date (fingerprint ..., written ...), skipped`` line for a stage whose parts are
all current, these lines in pipeline order (:func:`~maskdm_pipeline.caching.units.stage_order`);
otherwise a line per part, saying why each one runs; a warning per stale input read from a stage
outside the run; and, at the end, how many parts ran.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from maskdm_pipeline.fingerprint import fingerprint

if TYPE_CHECKING:
    from maskdm_pipeline.caching.judge import Decision
    from maskdm_pipeline.caching.units import Part

logger = logging.getLogger("maskdm_pipeline.caching")


def _when(written: str | None) -> str:
    if not written:
        return "unknown"
    return dt.datetime.fromisoformat(written).astimezone().strftime("%Y-%m-%d %H:%M")


class Report:
    """The log of one run's decisions, in the order the parts are decided (topological waves).

    A stage's parts are held until the stage is resolved: all of them decided current (one line
    for the stage), or one of them runs (a line per part from then on). A stage's line waits, in
    turn, for every stage before it in ``order`` to be resolved, so that the stage lines come out
    in pipeline order, however the waves interleave the stages.

    Args:
        parts: the parts of this run.
        order: stage names in pipeline order (stages not in ``parts`` are ignored).
    """

    def __init__(self, parts: list[Part], order: list[str]):
        self.parts = Counter(p.stage for p in parts)
        self.pending = Counter(self.parts)
        self.held: dict[str, list[Decision]] = {}
        self.split: set[str] = set()
        self.order = [stage for stage in order if stage in self.parts]  # the stages not yet resolved
        self.current: dict[str, tuple[str, str | None]] = {}  # a current stage's line: (fingerprint, written)

    def _name(self, part: Part) -> str:
        return part.name(alone=self.parts[part.stage] == 1)

    def _skipped(self, name: str, fingerprint: str, written: str | None) -> None:
        logger.info("%s: up to date (fingerprint %s, written %s), skipped", name, fingerprint[:6], _when(written))

    def decided(self, decision: Decision, stale: Mapping[str, tuple[str, str]]) -> None:
        """Log ``decision`` (and a warning per stale input of its part: ``stale``, input -> (the
        stage outside the run that would rerun, why)), or hold it until its stage is resolved."""
        part, stage = decision.part, decision.part.stage
        self.pending[stage] -= 1
        for line in stale_warning(self._name(part), stale) if stale else ():
            logger.warning(line)
        if not decision.current:
            if stage not in self.split:
                self.split.add(stage)
                for held in self.held.pop(stage, []):
                    self._skipped(self._name(held.part), held.fingerprint, held.written)
            logger.info("%s: runs (%s)", self._name(part), "; ".join(decision.reasons))
            self._resolved()
        elif stage in self.split:
            self._skipped(self._name(part), decision.fingerprint, decision.written)
        else:
            self.held.setdefault(stage, []).append(decision)
            if not self.pending[stage]:
                held = self.held.pop(stage)
                key = held[0].fingerprint if len(held) == 1 else _combined(held)
                self.current[stage] = (key, max(d.written or "" for d in held) or None)
                self._resolved()

    def _resolved(self, everything: bool = False) -> None:
        """Log the lines of the current stages whose turn has come (``everything``: all of them)."""
        while self.order and (everything or self.order[0] in self.split or self.order[0] in self.current):
            stage = self.order.pop(0)
            if stage in self.current:
                self._skipped(stage, *self.current.pop(stage))

    def recorded(self, decision: Decision) -> None:
        """A part that ran has finished and its record is written: from here a rerun skips it."""
        logger.info("%s: finished, recorded as up to date (fingerprint %s)", self._name(decision.part),
                    decision.fingerprint[:6])

    def stopped(self) -> None:
        """The run failed: the stages found current so far, whatever comes before them."""
        self._resolved(everything=True)

    def summary(self, decisions: list[Decision]) -> None:
        self._resolved(everything=True)
        ran = [self._name(d.part) for d in decisions if not d.current]
        logger.info("Cache: %d of %d parts ran%s, %d up to date", len(ran), len(decisions),
                    f" ({', '.join(ran)})" if ran else "", len(decisions) - len(ran))


def _combined(decisions: list[Decision]) -> str:
    return fingerprint({d.part.label: d.fingerprint for d in decisions})


def stale_warning(name: str, stale: Mapping[str, tuple[str, str]]) -> list[str]:
    """The warning about inputs of part ``name`` that stages outside the run would rewrite, one
    line each (``stale``: input -> (that stage, why)). One input: ``sample [maskdm]: input
    finetuned (finetune would rerun: ...) is out of date, and finetune is not part of this run:
    using it as it is``. Several: a line that says so, then ``<name>: input <input> (<stage>
    would rerun: <why>)`` for each."""
    writers = sorted({writer for writer, _ in stale.values()})
    inputs = [f"input {dataset} ({writer} would rerun: {why})" for dataset, (writer, why) in stale.items()]
    if len(stale) == 1:
        return [f"{name}: {inputs[0]} is out of date, and {writers[0]} is not part of this run: using it as it is"]
    head = (f"{name}: {len(stale)} inputs are out of date, and {' and '.join(writers)} "
            f"{'are' if len(writers) > 1 else 'is'} not part of this run: using them as they are")
    return [head, *(f"{name}: {line}" for line in inputs)]
