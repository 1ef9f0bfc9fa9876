"""The floors of docs/architecture.md, checked on the code: every ``import`` under ``src/`` (read
with ``ast`` by ``maskdm_pipeline.codegraph``, so lazy imports inside functions count too) points to
its own floor or below.

From the bottom: math (models, masking, diffusion, metrics) and the neutral modules (fileio,
devices, shards, listing, pool, atomic, codegraph, runlock); the rooms, with training/ and datasets/
side by side; params.py; train_stage.py; the stages (pipelines/<stage>/); the wiring. The one import by name,
``datasets/__init__.py``'s lazy ``importlib.import_module``, counts as an import of every module of
that package.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from maskdm_pipeline.codegraph import PACKAGE, imported_modules, read_package

SRC = Path(__file__).resolve().parents[2] / "src" / PACKAGE

# Floor of each top-level room of the package (the package root itself holds only __version__).
FLOORS = {
    "": 0,
    **dict.fromkeys(("models", "masking", "diffusion", "metrics", "fileio", "devices", "shards", "listing", "dotted",
                     "pool", "atomic", "codegraph", "runlock"), 0),
    **dict.fromkeys(("training", "datasets", "fd_clf", "generation", "imaging", "conversion", "splitting",
                     "reporting", "tracking", "fingerprint", "workers"), 1),
    "params": 2,
    "train_stage": 3,
    "pipelines": 4,
    **dict.fromkeys(("settings", "pipeline_registry", "hooks", "console", "caching", "project", "configuration",
                     "cli", "__main__"), 5),
    "tracking.mlflow_hook": 5,  # a module on a floor of its own: tracking/ is a room, its hook is wiring
    "tracking.mlflow_store": 5,  # what the hook writes into the MLflow store: wiring too
    "tracking.settings": 5,  # the schema of mlflow.yml (its refusals are ParameterErrors, floor 2)
}
MATH = ("models", "masking", "diffusion", "metrics")
NEUTRAL = ("fileio", "devices", "shards", "listing", "pool", "atomic", "codegraph", "dotted", "runlock")
# Kedro below the stages only where a Kedro class is subclassed (datasets/); nodes.py never.
KEDRO_ALLOWED = ("datasets", "pipeline_registry", "settings", "hooks", "caching", "project", "configuration", "cli",
                 "__main__", "tracking.mlflow_hook")


@cache
def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports, read by the package's own reader (the cache's code
    identities use the same graph), from the repository's ``src/``."""
    return {name: set(module.imports) for name, module in sorted(read_package(SRC).items())}


def room(name: str) -> str:
    """``maskdm_pipeline.training.loop`` -> ``training``; the package root -> ``""``; a module
    that FLOORS names itself (``tracking.mlflow_hook``) -> that name."""
    parts = name.removeprefix(PACKAGE).lstrip(".").split(".")
    return next((".".join(parts[:n]) for n in range(len(parts), 1, -1) if ".".join(parts[:n]) in FLOORS), parts[0])


def violations(rule: Callable[[str, str], bool], graph_: dict[str, set[str]] | None = None) -> list[str]:
    """``"a imports b"`` for each import of the project between two rooms that ``rule(room_a,
    room_b)`` refuses."""
    graph_ = graph() if graph_ is None else graph_
    return [f"{a} imports {b}" for a, modules in graph_.items() for b in sorted(modules)
            if (b == PACKAGE or b.startswith(PACKAGE + ".")) and room(a) != room(b) and rule(room(a), room(b))]


def points_up(a: str, b: str) -> bool:
    return FLOORS[b] > FLOORS[a]


def math_leaves_math(a: str, b: str) -> bool:
    return a in MATH and b not in (*MATH, "devices", "")


def neutral_imports_ours(a: str, b: str) -> bool:
    """A neutral module imports only the libraries and other neutral modules (fileio writes
    through atomic.atomic_write)."""
    return a in NEUTRAL and b not in NEUTRAL


def crosses_training_and_datasets(a: str, b: str) -> bool:
    return {a, b} == {"training", "datasets"}


def test_the_reader_sees_lazy_relative_and_from_imports() -> None:
    source = ("from .patching import patchify\nfrom maskdm_pipeline import fd_clf, tracking\n"
              "def f():\n    import maskdm_pipeline.training.loop\n    from .. import devices\n")
    known = {"maskdm_pipeline.models.patching", "maskdm_pipeline.fd_clf", "maskdm_pipeline.devices"}
    assert imported_modules(source, "maskdm_pipeline.models.uvit", False, known) == {
        "maskdm_pipeline.models.patching", "maskdm_pipeline.fd_clf", "maskdm_pipeline",
        "maskdm_pipeline.training.loop", "maskdm_pipeline.devices"}
    # an import by name (datasets/__init__.py's lazy loader) counts as every module of its package
    by_name = "import importlib\ndef __getattr__(name):\n    return importlib.import_module(name, __name__)\n"
    known = {"maskdm_pipeline.datasets", "maskdm_pipeline.datasets.shards", "maskdm_pipeline.fileio"}
    assert imported_modules(by_name, "maskdm_pipeline.datasets", True, known) == {
        "importlib", "maskdm_pipeline.datasets.shards"}


def test_the_rules_refuse_what_they_should() -> None:
    """Each rule on a made-up graph with one wrong arrow of each kind."""
    bad = {"maskdm_pipeline.masking": {"maskdm_pipeline.training.config"},
           "maskdm_pipeline.fileio": {"maskdm_pipeline.masking"},
           "maskdm_pipeline.datasets.arrays": {"maskdm_pipeline.training.job"},
           "maskdm_pipeline.metrics.inception": {"maskdm_pipeline.devices", "maskdm_pipeline.metrics.frechet"}}
    assert violations(points_up, bad) == ["maskdm_pipeline.masking imports maskdm_pipeline.training.config"]
    assert violations(math_leaves_math, bad) == ["maskdm_pipeline.masking imports maskdm_pipeline.training.config"]
    assert violations(neutral_imports_ours, bad) == ["maskdm_pipeline.fileio imports maskdm_pipeline.masking"]
    assert violations(crosses_training_and_datasets, bad) == [
        "maskdm_pipeline.datasets.arrays imports maskdm_pipeline.training.job"]


def test_a_module_floored_on_its_own_is_a_room_of_its_own() -> None:
    """tracking/ is a room (floor 1) whose MLflow hook is wiring (floor 5): the hook may import
    the cache, the pure half may not."""
    assert room("maskdm_pipeline.tracking.mlflow_hook") == "tracking.mlflow_hook"
    assert room("maskdm_pipeline.tracking.logged") == room("maskdm_pipeline.tracking") == "tracking"
    made_up = {"maskdm_pipeline.tracking.logged": {"maskdm_pipeline.caching.records"},
               "maskdm_pipeline.tracking.mlflow_hook": {"maskdm_pipeline.caching.records",
                                                        "maskdm_pipeline.tracking.logged"}}
    assert violations(points_up, made_up) == [
        "maskdm_pipeline.tracking.logged imports maskdm_pipeline.caching.records"]


def test_every_module_stands_on_a_floor() -> None:
    """A new room must be placed in docs/architecture.md and in FLOORS before it is used."""
    assert not [name for name in graph() if room(name) not in FLOORS]


def test_imports_point_down() -> None:
    assert not violations(points_up)


def test_math_imports_only_math_and_devices() -> None:
    assert not violations(math_leaves_math)


def test_neutral_modules_import_nothing_of_the_project() -> None:
    assert not violations(neutral_imports_ours)


def test_training_and_datasets_stand_side_by_side() -> None:
    assert not violations(crosses_training_and_datasets)


def test_no_stage_imports_another_stage() -> None:
    stage = {name: name.split(".")[2] for name in graph() if room(name) == "pipelines" and name.count(".") >= 2}
    assert not [f"{a} imports {b}" for a in stage for b in graph()[a] if b in stage and stage[b] != stage[a]]


def test_kedro_only_in_datasets_pipeline_files_and_wiring() -> None:
    """Nodes, the engine and the math run without Kedro (nodes.py is a plain function)."""
    users = {name for name, modules in graph().items() if any(m.split(".")[0] == "kedro" for m in modules)}
    assert not {name for name in users if room(name) not in KEDRO_ALLOWED and not name.endswith(".pipeline")}


def test_mlflow_only_in_the_mlflow_hook() -> None:
    """What is logged is decided without MLflow (tracking/logged.py); only the hook (and the
    module it writes the store's entities with) talks to it."""
    users = {name for name, modules in graph().items() if any(m.split(".")[0] == "mlflow" for m in modules)}
    assert users == {"maskdm_pipeline.tracking.mlflow_hook", "maskdm_pipeline.tracking.mlflow_store"}
