"""Inputs a run cannot use, refused before anything runs: one line that says which settings
differ (made with -> asked now) or which input does not exist, and the command that makes them
fit; exit status 2 (``console.UsageMistake``). No "rerun the same command" hint: that command
would fail again.

The cache already knows, for each input that a stage outside the run writes, whether that stage
(or one before it) would rerun and why (:class:`~maskdm_pipeline.caching.judge.Upstream`); such
an input is used as it is, with a warning, when it is only older. It does not *fit* a part that
builds a model from the settings (reads the ``model`` block: the training stages) when the
parameters that changed since it was made include one that decides what a model is
(``params.MODEL_DEFINING``: the image geometry, the model, the schedule and prediction): the
weights would not load, or the images have another size than the model is asked for, or a mask
no longer fits the patch grid, or fine-tuning would start from a network that computes another
quantity. A part that takes its model from a checkpoint (sample) or compares images as they are
(evaluate, report) stays consistent with its inputs, and keeps the warning.

An input written outside the run that does not exist (``kedro run --pipelines finetune`` in a new
project), or raw data whose catalog path does not exist, is refused the same way: Kedro would
find out when the node loads it, after the stages before it ran.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from maskdm_pipeline.caching import records
from maskdm_pipeline.caching.hints import command_with_pipelines
from maskdm_pipeline.caching.judge import UNSET, Upstream
from maskdm_pipeline.console import UsageMistake
from maskdm_pipeline.listing import shown
from maskdm_pipeline.params import MODEL_DEFINING, defines_the_model

if TYPE_CHECKING:
    from maskdm_pipeline.caching.units import Part

BUILDS_A_MODEL = "params:model"  # a part that reads this block builds its model from the settings
_SHOWN = 4  # settings named in the line


def check_inputs_fit(parts: Sequence[Part], upstream: Upstream, catalog: Any, order: Sequence[str],
                     argv: Sequence[str]) -> None:
    """Raise :class:`UsageMistake` when a part of the run reads an input that does not exist or
    was made with other model-defining settings (see the module's docstring); ``order``: every
    stage in pipeline order, ``argv``: the command line, for the command that makes them fit."""
    judge = upstream.judge
    missing: dict[str, str | None] = {}  # input -> the stage that writes it (None: raw data)
    changed: dict[str, tuple[Any, Any]] = {}
    unfit: list[str] = []
    refused: list[str] = []
    remake: set[str] = set()
    for part in parts:
        before = len(missing) + len(unfit)
        for name in part.inputs:
            writer = judge.writers.get(name)
            dataset = catalog.get(name, fallback_to_runtime_pattern=True)
            if writer is not None and writer.node_names & upstream.in_run or records.exempt(dataset):
                continue
            judge.identity(name)  # an input its dataset cannot read stops the run with the dataset's own line
            if not _exists(catalog, name):
                missing[name] = writer.stage if writer is not None else None
                if writer is not None:
                    remake |= _stages_to_remake(writer, upstream)
                continue
            decision = upstream.stale_decision(name) if BUILDS_A_MODEL in part.params else None
            differ = {k: v for k, v in (decision.params_changed if decision else {}).items() if defines_the_model(k)}
            if differ:
                changed.update(differ)
                unfit.append(name)
                remake |= {decision.part.stage} | _stages_to_remake(decision.part, upstream)
        if len(missing) + len(unfit) > before:
            refused.append(part.stage)
    if refused:
        raise UsageMistake(_message(list(dict.fromkeys(refused)), missing, unfit, changed, catalog,
                                    [s for s in order if s in remake | {p.stage for p in parts}], argv))


def _exists(catalog: Any, name: str) -> bool:
    """Kedro's ``exists()`` of the input, where its dataset implements it (a class that does not
    is taken to exist: Kedro's default answer, "assuming it does not", would refuse it)."""
    from kedro.io import AbstractDataset

    dataset = catalog.get(name, fallback_to_runtime_pattern=True)
    if dataset is None or type(dataset)._exists is AbstractDataset._exists:
        return True
    return bool(catalog.exists(name))


def _stages_to_remake(writer: Part, upstream: Upstream, seen: set[int] | None = None) -> set[str]:
    """``writer``'s stage and every stage before it, outside the run, that would rerun."""
    seen = set() if seen is None else seen
    if id(writer) in seen:
        return set()
    seen.add(id(writer))
    stages = {writer.stage}
    for name in writer.inputs:
        decision = upstream.stale_decision(name)
        if decision is not None:
            stages |= _stages_to_remake(decision.part, upstream, seen)
    return stages


def _order(name: str) -> tuple[int, str]:
    """Model-defining settings in :data:`MODEL_DEFINING`'s order: the data's, the model's, the diffusion's."""
    import fnmatch

    return next(i for i, p in enumerate(MODEL_DEFINING) if fnmatch.fnmatchcase(name, p)), name


def _value(value: Any) -> str:
    return UNSET if value is UNSET else repr(value) if isinstance(value, str) else str(value)


def _message(refused: list[str], missing: Mapping[str, str | None], unfit: list[str],
             changed: Mapping[str, tuple[Any, Any]], catalog: Any, stages: list[str], argv: Sequence[str]) -> str:
    who = " and ".join(refused)
    clauses = []
    raw = [name for name, stage in missing.items() if stage is None]
    made = [name for name, stage in missing.items() if stage is not None]
    if made:
        clauses.append(f"{_listed(made, catalog)} {'does' if len(made) == 1 else 'do'} not exist")
    if unfit:
        names = sorted(changed, key=_order)
        described = ", ".join(f"{k} {_value(changed[k][0])} -> {_value(changed[k][1])}" for k in names[:_SHOWN])
        more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
        clauses.append(f"{', '.join(unfit)} {'was' if len(unfit) == 1 else 'were'} made with other settings "
                       f"(made with -> this run: {described}{more})")
    if raw:
        clauses.append(f"{_listed(raw, catalog)} {'does' if len(raw) == 1 else 'do'} not exist: it is data no stage "
                       "writes; point its `path` (or `filepath`) in conf/<env>/catalog.yml at it")
    line = f"{who} cannot run on its inputs: {'; '.join(clauses)}"
    if made or unfit:
        them = "it" if len(made) + len(unfit) == 1 else "them"
        line += (f". Make {them} first: `{command_with_pipelines(argv, stages)}` (or `{command_with_pipelines(argv)}`, "
                 "which reruns whatever is out of date)")
    return f"{line}; nothing was run."


def _listed(names: list[str], catalog: Any) -> str:
    def one(name: str) -> str:
        path = records.dataset_path(catalog.get(name, fallback_to_runtime_pattern=True))
        return f"{name} ({shown(path)})" if path is not None else name

    return ", ".join(one(name) for name in names)
