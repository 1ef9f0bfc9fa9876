"""The parts of a pipeline the cache decides on, and the stage each belongs to.

A part is a set of nodes connected through in-memory datasets (``pretrain_data`` hands the
images to ``pretrain`` in memory, so the two are one part): it can only run whole, and everything
it leaves on disk is written by it. Nodes connected through a file are parts of their own:
``convert_images`` writes the converted shards that ``split_images`` reads, so a rerun of the
conversion that wrote the same content leaves the split current. Parts are small where the DAG
allows it, so that a change reruns no more than it must: MaskDM's and the baseline's sampling are
two parts of the ``sample`` stage, and "``finetune.lr`` changed" reruns MaskDM's alone.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

PARAMS_PREFIX = "params:"
STAGES_PACKAGE = "maskdm_pipeline.pipelines"  # a stage is the pipeline of its sub-package here


@dataclass(eq=False)
class Part:
    """Nodes the cache runs or skips together.

    Attributes:
        nodes: in topological order.
        stage: the registered pipeline (``pretrain``, ...) the nodes belong to.
        inputs: catalog datasets the part reads and does not write (``params:`` excluded).
        params: the ``params:...`` inputs.
        outputs: the persistent datasets it writes (what the cache fingerprints).
        label: names the part among the parts of its stage (``maskdm``, ``split_images``, ...).
    """

    nodes: list[Node]
    stage: str
    inputs: list[str]
    params: list[str]
    outputs: list[str]
    label: str = ""
    node_names: frozenset[str] = field(default_factory=frozenset)

    def name(self, alone: bool) -> str:
        """``pretrain`` when the part is its stage's only one in the run, else ``sample [maskdm]``."""
        return self.stage if alone or not self.label else f"{self.stage} [{self.label}]"

    def what(self) -> dict[str, str]:
        """Node name -> the function it calls: the ``what`` of the part's fingerprint."""
        return {n.name: f"{n.func.__module__}.{n.func.__qualname__}" for n in self.nodes}

    def modules(self) -> list[str]:
        """The modules the part's code starts in: its stage's package (the pipeline that wires the
        nodes) and the module of each node's function (a ``functools.partial`` by the function
        it wraps)."""
        funcs = [getattr(n.func, "func", n.func) for n in self.nodes]
        return sorted({f"{STAGES_PACKAGE}.{self.stage}", *(f.__module__ for f in funcs)})


def stage_pipelines() -> dict[str, Pipeline]:
    """Every stage's pipeline by name, whatever ``--pipelines`` selected (Kedro then loads only the
    selected ones), so that the cache can follow an input back to a stage outside the run."""
    package = importlib.import_module(STAGES_PACKAGE)
    return {info.name: importlib.import_module(f"{package.__name__}.{info.name}").create_pipeline()
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name) if info.ispkg}


def stages_by_node(stages: Mapping[str, Pipeline]) -> dict[str, str]:
    """Node name -> the smallest stage pipeline that holds it."""
    owner: dict[str, str] = {}
    for name, pipe in sorted(stages.items(), key=lambda item: (len(item[1].nodes), item[0])):
        for node in pipe.nodes:
            owner.setdefault(node.name, name)
    return owner


def split_parts(pipeline: Pipeline, persistent: Any, stage_of: Mapping[str, str]) -> list[Part]:
    """The parts of ``pipeline`` in topological order; ``persistent(name)`` tells whether a dataset
    lives on disk (a catalog entry that is not a ``MemoryDataset``). Parts that would depend on
    each other both ways (a memory dataset and a file between the same nodes) are merged."""
    nodes = pipeline.nodes  # topological order
    group = {n.name: n.name for n in nodes}

    def root(name: str) -> str:
        while group[name] != name:
            group[name] = group[group[name]]
            name = group[name]
        return name

    writer = {out: n.name for n in nodes for out in n.outputs}
    for node in nodes:
        for dataset in node.inputs:
            if dataset in writer and not persistent(dataset):
                group[root(node.name)] = root(writer[dataset])
    while True:
        after: dict[str, set[str]] = {root(n.name): set() for n in nodes}  # group -> groups it reads from
        for n in nodes:
            after[root(n.name)] |= {root(writer[d]) for d in n.inputs if d in writer} - {root(n.name)}
        cycle = next(((a, b) for a in after for b in after[a] if a in _reachable(b, after)), None)
        if cycle is None:
            break
        group[root(cycle[0])] = root(cycle[1])
    members: dict[str, list[Node]] = {}
    for node in nodes:
        members.setdefault(root(node.name), []).append(node)
    parts = [_part(group_nodes, persistent, stage_of) for group_nodes in members.values()]
    _label(parts)
    roots = list(members)
    by_root = dict(zip(roots, parts, strict=True))
    return [by_root[r] for r in _in_order(roots, after)]


def stage_order(parts: list[Part]) -> list[str]:
    """The stages of ``parts`` (in topological order) in pipeline order: each after the stages it
    reads from, else in the order of its first part (``preprocess``, ``pretrain``, ``baseline``,
    ..., ``report``: the FID reference statistics, an early part of ``evaluate``, do not move
    ``evaluate`` before the training stages)."""
    writer = {out: p.stage for p in parts for out in p.outputs}
    after: dict[str, set[str]] = {}
    for part in parts:
        read = {writer[d] for d in part.inputs if d in writer}
        after.setdefault(part.stage, set()).update(read - {part.stage})
    return _in_order(list(after), after)


def _reachable(start: str, after: Mapping[str, set[str]]) -> set[str]:
    """Every group that ``start`` depends on, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for up in after[todo.pop()] - seen:
            seen.add(up)
            todo.append(up)
    return seen


def _in_order(names: list[str], after: Mapping[str, set[str]]) -> list[str]:
    """``names``, each after the ones it reads from (``after``), else in the given order; where
    some read from each other (a cycle), the earliest of them goes first."""
    ordered: list[str] = []
    while len(ordered) < len(names):
        left = [n for n in names if n not in ordered]
        ordered.append(next((n for n in left if after[n] <= set(ordered)), left[0]))
    return ordered


def _part(nodes: list[Node], persistent: Any, stage_of: Mapping[str, str]) -> Part:
    written = {out for n in nodes for out in n.outputs}
    read = [d for n in nodes for d in n.inputs if d not in written]
    inputs = _unique(d for d in read if not d.startswith(PARAMS_PREFIX) and d != "parameters")
    params = _unique(d for d in read if d.startswith(PARAMS_PREFIX))
    outputs = _unique(out for n in nodes for out in n.outputs if persistent(out))
    stage = stage_of.get(nodes[0].name, nodes[0].namespace or nodes[0].name)
    return Part(nodes, stage, inputs, params, outputs, node_names=frozenset(n.name for n in nodes))


def _label(parts: list[Part]) -> None:
    """A namespace when it is the part's alone in its stage (``maskdm``), else the names of the
    nodes that write the part's files (``split_images``, ``fd_clf.reference``)."""
    by_stage: dict[str, list[Part]] = {}
    for part in parts:
        by_stage.setdefault(part.stage, []).append(part)
    for siblings in by_stage.values():
        spaces = [{n.namespace for n in p.nodes} for p in siblings]
        for part, space in zip(siblings, spaces, strict=True):
            (namespace,) = space if len(space) == 1 else (None,)
            if namespace and sum(s == {namespace} for s in spaces) == 1:
                part.label = namespace
            else:
                writers = [n.name for n in part.nodes if set(n.outputs) & set(part.outputs)]
                part.label = "+".join(writers or [part.nodes[-1].name])


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
