"""The project's ``kedro run``: Kedro's own command, where every mistake typed on the command line
ends in one line and exit status 2, before anything runs.

Kedro's plug-in point for project commands is this module (``<package>/cli.py``): the commands of
its ``cli`` group take the place of Kedro's own, for ``kedro run`` and for ``python -m
maskdm_pipeline`` alike (``kedro.framework.cli.utils.find_run_command``). Kedro's documentation
suggests copying its ``run`` into the module; the command here is Kedro's ``run`` object itself
(its options, help and body), so it follows Kedro's releases, with three changes:

- a usage error click or Kedro raises while reading the options (an unknown option, a value
  ``--conf-source`` or ``--config`` refuses, ``--params a``, ``--load-versions x``) is one
  ``Error:`` line, not click's usage block or Kedro's ``KedroCliError`` output, which prints
  ``NoneType: None`` and exits with status 1 in Kedro 1.7;
- before Kedro's body runs, :func:`check_command_line` checks the names Kedro reads for the run:
  the runner and its arguments, the pipelines, the node / dataset / namespace / tag filters and
  the ``--load-versions`` entries. Each check asks Kedro's own machinery (``load_obj`` for the
  runner, the registry and ``Pipeline.filter`` for the selection) and only words its refusal; our
  own checks stand where Kedro gives nothing usable, each saying why;
- a runner whose constructor refuses its ``--runner-params`` values is named in one line.

What is wrong inside ``conf/`` is the configuration loader's to say (``project.ProjectConfigLoader``),
a catalog entry's the catalog hook's (``hooks.CatalogEntriesHook``), a parameter's the schema's
(``params.py``), and an input made with other settings the cache's (``caching/fit.py``).
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import KedroCliError

from maskdm_pipeline.console import UsageMistake, choices

__all__ = ["check_command_line", "cli", "params_problem", "run"]

# The filters of `kedro run`: option, the name of its value in Kedro's command, what it names.
FILTERS = (("--nodes", "node_names", "node"), ("--from-nodes", "from_nodes", "node"),
           ("--to-nodes", "to_nodes", "node"), ("--from-inputs", "from_inputs", "dataset"),
           ("--to-outputs", "to_outputs", "dataset"), ("--namespaces", "namespaces", "namespace"),
           ("--tags", "tags", "tag"))


@click.group(name="maskdm_pipeline")
def cli() -> None:
    """The project's commands (Kedro's ``run``, ending every mistake in one line)."""


class _OneLineRun(click.Command):
    """Kedro's ``run`` (its options, help and body): usage errors as one line, the typed names
    checked before the body, a runner refusing its arguments named (module docstring)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise UsageMistake(exc.format_message()) from None
        except KedroCliError as exc:
            raise UsageMistake(exc.format_message()) from None

    def invoke(self, ctx: click.Context) -> Any:
        check_command_line(ctx.params)
        try:
            return super().invoke(ctx)
        except KedroCliError as exc:  # Kedro's own refusals in its body (--pipeline with --pipelines, ...)
            raise UsageMistake(exc.format_message()) from None
        except (TypeError, ValueError) as exc:
            if not _raised_by_a_runner_constructor(exc):
                raise
            values = ",".join(f"{k}={v}" for k, v in (ctx.params.get("runner_params") or {}).items())
            raise UsageMistake(f"--runner-params {values}: {ctx.params.get('runner') or 'SequentialRunner'} "
                               f"refused them: {exc}") from None


def _params_option(option: click.Parameter) -> click.Parameter:
    """``--params`` / ``--runner-params`` with Kedro's own callback, whose refusal of an item
    (``ctx.fail``: click's usage block) becomes :func:`params_problem`'s line."""
    wrapped = copy.copy(option)
    split = option.callback

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return split(ctx, param, value) if split else value
        except click.UsageError:
            raise UsageMistake(params_problem(value, runner=option.name == "runner_params")) from None

    wrapped.callback = callback
    return wrapped


def _config_option(option: click.Parameter) -> click.Parameter:
    """``--config``: Kedro reads the file's ``run`` section with OmegaConf; a file that is not
    YAML or has no ``run:`` section reached the user as a traceback."""
    import yaml

    wrapped = copy.copy(option)
    read = option.callback

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return read(ctx, param, value) if read else value
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise UsageMistake(f"--config {value} is not valid YAML: {getattr(exc, 'problem', exc)}{where}") from None
        except KeyError:
            raise UsageMistake(f"--config {value}: the file has no `{ctx.info_name}:` section; put the options under "
                               f"it, as a mapping of option names to values") from None

    wrapped.callback = callback
    return wrapped


def _with_our_callbacks(option: click.Parameter) -> click.Parameter:
    if option.name in ("params", "runner_params"):
        return _params_option(option)
    if option.name == "config":
        return _config_option(option)
    return option


run = _OneLineRun(
    name="run", callback=kedro_run.callback, params=[_with_our_callbacks(p) for p in kedro_run.params],
    help=kedro_run.help, epilog=kedro_run.epilog, short_help=kedro_run.short_help,
    context_settings=kedro_run.context_settings, options_metavar=kedro_run.options_metavar,
    add_help_option=kedro_run.add_help_option, no_args_is_help=kedro_run.no_args_is_help)
cli.add_command(run)


# ---------------------------------------------------------------------------- the checks
def check_command_line(options: Mapping[str, Any]) -> None:
    """Refuse, with one :class:`UsageMistake` line, a runner, a pipeline, a filter or a
    ``--load-versions`` entry of ``kedro run``'s parsed ``options`` that does not exist."""
    _check_runner(options.get("runner"), options.get("runner_params") or {})
    _check_selection(options)
    if options.get("load_versions"):
        _check_load_versions(options)


def params_problem(value: str, runner: bool = False) -> str:
    """The line for a ``--params`` (``runner``: ``--runner-params``) value Kedro cannot split
    into ``name=value`` items (it splits at every comma)."""
    from maskdm_pipeline.params import parameter_names

    option = "--runner-params" if runner else "--params"
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    bad = next((item for item in items if "=" not in item or not item.partition("=")[0].strip()), str(value))
    if "=" in bad:
        return f"{option} {bad}: the name before '=' is empty"
    example = "max_workers=2" if runner else "pretrain.steps=2000,pretrain.lr=0.001"
    how = f"an item is name=value, and items are separated by commas ({option} {example})"
    if runner:
        return f"{option} {bad}: {how}"
    if bad in parameter_names():
        return f"{option} {bad}: no value; write {bad}=<value> ({how})"
    return (f"{option} {bad}: {how}; and {bad} is no parameter: "
            f"{choices(bad, parameter_names(), 'parameters', 'conf/base/parameters*.yml')}")


def _check_runner(name: str | None, arguments: Mapping[str, Any]) -> None:
    """The runner as Kedro resolves it (``load_obj(name, "kedro.runner")``): a name of
    ``kedro.runner`` or the dotted path of a class; its ``--runner-params`` by name against its
    constructor (Kedro's own refusal is a ``TypeError`` traceback)."""
    import kedro.runner
    from kedro.runner import AbstractRunner
    from kedro.utils import load_obj

    found = {name: getattr(kedro.runner, name) for name in kedro.runner.__all__}
    runners = [name for name, cls in found.items()
               if isinstance(cls, type) and issubclass(cls, AbstractRunner) and cls is not AbstractRunner]
    given = name or "SequentialRunner"
    try:
        cls = load_obj(given, "kedro.runner")
    except (AttributeError, ImportError, ValueError):
        raise UsageMistake(f"--runner {given}: no such runner; {choices(given, runners, 'runners')} (or the "
                           "dotted path of a runner class)") from None
    if not (isinstance(cls, type) and issubclass(cls, AbstractRunner)):
        raise UsageMistake(f"--runner {given}: not a Kedro runner (a kedro.runner.AbstractRunner class); "
                           f"{choices(given, runners, 'runners')}")
    accepted = [p for p in inspect.signature(cls).parameters.values() if p.kind is not p.VAR_KEYWORD]
    known = [p.name for p in accepted]
    for key in arguments:
        if key not in known:
            raise UsageMistake(f"--runner-params {key}={arguments[key]}: {cls.__name__} takes no argument {key}; "
                               f"{choices(key, known, 'arguments')}")


def _raised_by_a_runner_constructor(error: BaseException) -> bool:
    """Whether ``error`` came out of a Kedro runner's ``__init__`` (Kedro builds the runner from
    ``--runner-params`` before anything runs): its traceback passes through one."""
    from kedro.runner import AbstractRunner

    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and isinstance(frame.f_locals.get("self"), AbstractRunner):
            return True
        tb = tb.tb_next
    return False


def _check_selection(options: Mapping[str, Any]) -> None:
    """The pipelines by name, then the filters with Kedro's own ``Pipeline.filter`` on them.

    The pipeline names are checked here against the registry: Kedro 1.7 names an unknown one
    with close matches, but only after ``find_pipelines(raise_errors=True)`` (the registry's
    choice, so that a pipeline that fails to import stops the run) has tried to import a module
    of that name and failed with a misleading ``ImportError``."""
    from kedro.framework.project import pipelines
    from kedro.pipeline import Pipeline

    registered = sorted(pipelines, key=lambda name: (name != "__default__", name))
    names = [*(options.get("pipelines") or []), *([options["pipeline"]] if options.get("pipeline") else [])]
    for name in names:
        if name not in registered:
            raise UsageMistake(f"--pipelines {name}: no such pipeline; {choices(name, registered, 'pipelines')}")
    names = names or ["__default__"]
    selected = sum((pipelines[name] for name in names), start=Pipeline([]))
    typed = {key: list(options.get(key) or []) for _, key, _ in FILTERS}
    if not any(typed.values()):
        return
    try:
        filtered = selected.filter(tags=typed["tags"], from_nodes=typed["from_nodes"], to_nodes=typed["to_nodes"],
                                   node_names=typed["node_names"], from_inputs=typed["from_inputs"],
                                   to_outputs=typed["to_outputs"], node_namespaces=typed["namespaces"] or None)
    except ValueError as exc:
        raise UsageMistake(_filter_problem(selected, names, typed)) from exc
    _check_memory_inputs(filtered, pipelines["__default__"], options, typed)


def _check_memory_inputs(filtered: Any, whole: Any, options: Mapping[str, Any],
                         typed: Mapping[str, list[str]]) -> None:
    """A selection of nodes that leaves out the node making one of their inputs in memory (no
    catalog file holds it): Kedro's runner refuses it, with a traceback, after the session's
    hooks have run (``Pipeline input(s) {...} not found in the DataCatalog``); the same test on
    the catalog's configuration, before anything runs, names the node to add."""
    made_by = {out: node.name for node in whole.nodes for out in node.outputs}
    free = [d for d in sorted(filtered.inputs()) if d in made_by]
    if not free:
        return
    from kedro.io.catalog_config_resolver import DEFAULT_RUNTIME_PATTERN, CatalogConfigResolver

    catalog = dict(_catalog_config(options))
    resolver = CatalogConfigResolver(config=catalog, default_runtime_patterns=DEFAULT_RUNTIME_PATTERN)

    def entry(name: str) -> Mapping[str, Any] | None:  # its catalog entry, a dataset factory's included
        pattern = name if name in catalog else resolver.match_dataset_pattern(name) or \
            resolver.match_user_catch_all_pattern(name)
        return catalog.get(pattern) if pattern else None

    memory = [d for d in free if entry(d) is None or "MemoryDataset" in str((entry(d) or {}).get("type", ""))]
    if not memory:
        return
    given = " ".join(f"{option} {','.join(typed[key])}" for option, key, _ in FILTERS if typed[key])
    readers = [n.name for n in filtered.nodes if memory[0] in n.inputs]
    raise UsageMistake(f"{given}: node {readers[0]} reads {memory[0]}, which node {made_by[memory[0]]} makes in "
                       f"memory (no catalog file holds it), and {made_by[memory[0]]} is not selected; select it "
                       f"too, e.g. --nodes {made_by[memory[0]]},{readers[0]}")


def _filter_problem(selected: Any, names: list[str], typed: Mapping[str, list[str]]) -> str:
    """The line for filters Kedro refused: the first name no node of the selected pipelines has,
    with where it is instead and the valid names, or that the filters together leave no node."""
    where = "the project's pipelines" if names == ["__default__"] else \
        f"the pipeline{'s' if len(names) > 1 else ''} {', '.join(names)}"
    describe = f"`kedro registry describe {names[0]}`"
    for option, key, kind in FILTERS:
        valid = _names(selected, kind)
        for value in typed[key]:
            if _matches(value, valid, kind):
                continue
            if kind == "tag" and not valid:
                return f"{option} {value}: no node of {where} has a tag; select nodes with --pipelines, --nodes or " \
                    "--namespaces"
            elsewhere = [n for n in _stages_holding(value, kind) if n not in names]
            found = f" (it is in {', '.join(elsewhere)}: add that to --pipelines)" if elsewhere else ""
            endings = [n for n in valid if n.endswith(f".{value}")]
            hint = f"did you mean {' or '.join(endings)}?" if endings else \
                choices(value, valid, f"{kind}s", describe if kind == "node" else "`kedro catalog describe-datasets`")
            return f"{option} {value}: no {kind} {value} in {where}{found}; {hint}"
    given = " ".join(f"{option} {','.join(typed[key])}" for option, key, _ in FILTERS if typed[key])
    return f"{given}: these select no node of {where} together; {describe} shows its nodes and datasets"


def _names(pipeline: Any, kind: str) -> list[str]:
    if kind == "node":
        return [n.name for n in pipeline.nodes]
    if kind == "dataset":
        return sorted(d for d in pipeline.datasets() if not d.startswith("params:") and d != "parameters")
    if kind == "namespace":
        return sorted({n.namespace for n in pipeline.nodes if n.namespace})
    return sorted({tag for n in pipeline.nodes for tag in n.tags})


def _matches(value: str, valid: Iterable[str], kind: str) -> bool:
    if kind == "namespace":  # Kedro takes a namespace and those nested in it
        return any(v == value or v.startswith(f"{value}.") for v in valid)
    return value in valid


def _stages_holding(value: str, kind: str) -> list[str]:
    from kedro.framework.project import pipelines

    return [name for name, pipe in pipelines.items()
            if name != "__default__" and _matches(value, _names(pipe, kind), kind)]


def _check_load_versions(options: Mapping[str, Any]) -> None:
    """Each ``--load-versions`` entry must name a versioned catalog entry. Kedro refuses an
    unknown name only with a traceback, and silently ignores a version asked of an entry that
    is not versioned (the run then loads the current file): our own check, on the catalog's
    configuration as Kedro's loader reads it."""
    catalog = _catalog_config(options)
    versioned = [name for name, entry in catalog.items() if isinstance(entry, Mapping) and entry.get("versioned")]
    for name in options["load_versions"]:
        if name in versioned:
            continue
        what = "is not versioned (`versioned: true`)" if name in catalog else "is no catalog entry"
        valid = choices(name, versioned, "versioned entries") if versioned else \
            "no catalog entry of this project is versioned"
        raise UsageMistake(f"--load-versions {name}: {name} {what}, so there is no version of it to load; {valid}")


def _catalog_config(options: Mapping[str, Any]) -> Mapping[str, Any]:
    """The catalog's configuration as the run's session will read it (the project's loader, the
    same environment, conf source and ``--params``)."""
    from kedro.framework.project import settings
    from kedro.utils import find_kedro_project

    root = Path(find_kedro_project(Path.cwd()) or Path.cwd())
    conf = options.get("conf_source") or str(root / settings.CONF_SOURCE)
    loader = settings.CONFIG_LOADER_CLASS(conf_source=conf, env=options.get("env") or os.environ.get("KEDRO_ENV"),
                                          runtime_params=options.get("params") or {}, **settings.CONFIG_LOADER_ARGS)
    return loader["catalog"]
