"""Bad parameters are refused before any work, naming the parameter, the value and what is allowed.

The CLI tests run the real ``kedro run --env smoke --params ...`` in a throw-away project and check
the exit status, the one-line error the user sees (no traceback), that no node started and that
no file under ``data/`` was written or touched. Several faults share one run (the validator lists
every problem at once) to keep the suite fast; the in-process tests then check each fault alone.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DIFFUSION, PROJECT_ROOT, TINY_MODEL, load_params, squash

from maskdm_pipeline.params import ParameterError, validate_parameters


def _refused_before_any_work(project, params: dict[str, Any], pipeline: str = "pretrain") -> str:
    before = project.snapshot()
    assert before, "the project should hold primary data, so that 'nothing touched' means something"
    code, output = project.run("--pipelines", pipeline, params=params, timeout=120)
    text = squash(output)
    assert code == 2, f"expected exit status 2 (usage error), got {code}:\n{output[-3000:]}"
    assert "Error: Invalid parameters, nothing was run:" in text
    assert "Traceback" not in output, "the user should see the message, not a stack trace"
    assert "Running node" not in text, "a node started although the parameters were invalid"
    assert project.snapshot() == before, "a file under data/ was written or modified"
    return text


def test_cli_refuses_every_invalid_value_and_typo_at_once(make_project):
    """Invalid mask ratio, unknown preset / sampler / mask kind / schedule / precision, non-positive
    steps and lr, and a misspelt name: one run, each named with its value and the allowed values."""
    text = _refused_before_any_work(make_project(), {
        "pretrain.mask.ratio": 1.5,
        "model.preset": "huge",
        "sample.sampler": "euler",
        "pretrain.mask.kind": "stripes",
        "diffusion.schedule": "quadratic",
        "trainer.precision": "fp8",
        "finetune.steps": 0,
        "sample.steps": 0,
        "baseline.lr": -0.001,
        "pretrain.mask.ratoi": 0.5,
        "diffusion.min_snr_gamma": 0,
        "finetune.hflip": 1.5,
    })
    for expected in (
        "pretrain.mask.ratio=1.5: must be in [0, 1)",
        "model.preset='huge': must be one of tiny, small-64, small-128, small-256, base-256",
        "sample.sampler='euler': must be one of ddpm, ddim, dpm++2m",
        "pretrain.mask.kind='stripes': must be one of patch, block, crop",
        "diffusion.schedule='quadratic': must be one of linear, cosine",
        "trainer.precision='fp8': must be one of fp32, bf16, fp16",
        "finetune.steps=0: must be >= 1",
        "sample.steps=0: must be >= 1",
        "baseline.lr=-0.001: must be > 0",
        "pretrain.mask.ratoi=0.5 (from --params): unknown parameter; did you mean pretrain.mask.ratio?",
        "diffusion.min_snr_gamma=0: must be > 0",
        "finetune.hflip=1.5: must be in [0, 1]",
    ):
        assert expected in text, f"missing: {expected!r}\n{text[-3000:]}"
    assert text.count("mask.ratoi") == 1, f"the typo is reported more than once:\n{text[-3000:]}"


def test_cli_refuses_settings_that_do_not_fit_together(make_project):
    """Block size that does not divide the patch grid, a global batch that does not split over
    trainer.nproc, a ddpm sampler asked for fewer than T steps and more dense blocks than the
    model has in-blocks: refused in one go."""
    text = _refused_before_any_work(make_project(), {
        "pretrain.mask.kind": "block",
        "pretrain.mask.block_size": 3,
        "trainer.nproc": 3,
        "sample.sampler": "ddpm",
        "pretrain.mask.dense_blocks": 2,
        "sample.classes": [3],
    })
    for expected in (
        "sample.classes=[3]: the model is unconditional (model.class_conditional=false) and takes no class",
        "pretrain.mask.dense_blocks=2: must be an integer from 0 to 1, the number of in-blocks of a depth-2 U-ViT",
        "pretrain.mask.block_size=3 does not divide the 4x4 patch grid",
        "pretrain.batch_size=16: the global batch must be divisible by trainer.nproc=3",
        "sample.steps must be null or T=1000 for the ddpm sampler",
    ):
        assert expected in text, f"missing: {expected!r}\n{text[-3000:]}"


def test_cli_refuses_a_resolution_the_patch_size_does_not_divide(make_project):
    """preprocess.resolution=9 with 2-pixel patches: refused before preprocessing starts."""
    text = _refused_before_any_work(make_project(), {"preprocess.resolution": 9})
    assert "preprocess.resolution=9 is not divisible by the patch size 2 (from model.patch_size)" in text


def test_cli_refuses_a_bad_block_that_the_selected_pipeline_does_not_read(make_project):
    """`--pipelines report` reads no training parameter, so Kedro's own (per-pipeline) validation
    never looks at `pretrain`; the whole tree is still checked first, with the usual message."""
    text = _refused_before_any_work(make_project(), {"pretrain.checkpoint_every": -1,
                                                     "finetune.mask_ratio": 0.5}, pipeline="report")
    assert "pretrain.checkpoint_every=-1: must be >= 0" in text
    assert "finetune.mask_ratio=0.5 (from --params): unknown parameter" in text


def test_cli_checkpoint_every_zero_switches_periodic_checkpoints_off(make_project):
    """`pretrain.checkpoint_every=0` is accepted and means off: the stage trains to the end and
    saves no periodic checkpoint (the smoke run, every 10 steps, logs one per save: see
    test_smoke_run); the final state is still saved and the resume slot cleared."""
    project = make_project()
    code, output = project.run("--pipelines", "pretrain", params={"pretrain.checkpoint_every": 0})
    text = squash(output)
    assert code == 0, output[-3000:]
    assert "pretrain step 30/30" in text and "periodic checkpoint saved" not in text
    state = torch.load(project.data / "06_models" / "pretrained.pt", weights_only=True)
    assert state["step"] == 30 and state["config"]["stage"]["checkpoint_every"] == 0
    assert not (project.data / "06_models" / "pretrained.resume.pt").exists()


# ----------------------------------------------------------------------------- one fault at a time
@pytest.fixture(scope="module")
def smoke_params() -> dict[str, Any]:
    return load_params(PROJECT_ROOT, "smoke")


def _with(params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(params)
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = out
        for part in path:
            node = node[part]
        node[key] = value
    return out


@pytest.mark.parametrize(("changes", "expected"), [
    ({"pretrain.mask.ratio": 1.0}, "pretrain.mask.ratio=1.0: must be in [0, 1)"),
    ({"pretrain.mask.ratio": -0.1}, "pretrain.mask.ratio=-0.1: must be in [0, 1)"),
    ({"pretrain.mask.ratio": float("nan")}, "pretrain.mask.ratio=nan: must be a number"),
    ({"pretrain.mask.kind": "block", "pretrain.mask.block_size": 3},
     "pretrain.mask.block_size=3 does not divide the 4x4 patch grid"),
    ({"pretrain.mask.kind": "crop", "pretrain.mask.crop_size": 5},
     "pretrain.mask.crop_size=5 is larger than the 4x4 patch grid"),
    ({"pretrain.mask.kind": "crop", "pretrain.mask.crop_size": None},
     "pretrain.mask.crop_size is required for pretrain.mask.kind='crop'"),
    ({"preprocess.resolution": 10, "model.patch_size": 4},
     "preprocess.resolution=10 is not divisible by the patch size 4"),
    ({"preprocess.resolution": 18, "model.patch_size": None},
     "preprocess.resolution=18 is not divisible by the patch size 4 (from model.preset='tiny')"),
    ({"model.preset": "giant"}, "model.preset='giant': must be one of"),
    ({"sample.sampler": "euler"}, "sample.sampler='euler': must be one of ddpm, ddim, dpm++2m"),
    ({"sample.sampler": "ddim", "sample.steps": 1001}, "sample.steps must be an integer in [1, 1000]"),
    ({"sample.sampler": "ddim", "sample.steps": None}, "sample.steps must be an integer in [1, 1000]; got None"),
    ({"sample.eta": 1.5}, "sample.eta must lie in [0, 1]"),
    ({"pretrain.mask.kind": "random"}, "pretrain.mask.kind='random': must be one of patch, block, crop"),
    ({"diffusion.schedule": "sigmoid"}, "diffusion.schedule='sigmoid': must be one of linear, cosine"),
    ({"diffusion.prediction": "score"}, "diffusion.prediction='score': must be one of eps, x0, v"),
    ({"trainer.precision": "int8"}, "trainer.precision='int8': must be one of fp32, bf16, fp16"),
    ({"trainer.nproc": 5}, "finetune.batch_size=16: the global batch must be divisible by trainer.nproc=5"),
    ({"pretrain.steps": 0}, "pretrain.steps=0: must be >= 1"),
    ({"preprocess.workers": 0}, "preprocess.workers=0: must be >= 1"),
    ({"baseline.steps": -3}, "baseline.steps=-3: must be >= 1"),
    ({"finetune.lr": 0}, "finetune.lr=0: must be > 0"),
    ({"pretrain.lr": float("inf")}, "pretrain.lr=inf: must be a finite number"),
    ({"pretrain.batch_size": 2.5}, "pretrain.batch_size=2.5: must be an integer"),
    ({"pretrain.resume": "yes"}, "pretrain.resume='yes': must be true or false"),
    ({"pretrain.betas": [0.9, 1.5]}, "pretrain.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
    ({"finetune.init_from": "best"}, "finetune.init_from='best': must be one of raw, ema"),
    ({"pretrain.mask.ratoi": 0.5}, "pretrain.mask.ratoi=0.5: unknown parameter"),
    # smoke: depth 2
    ({"pretrain.mask.dense_blocks": 2}, "pretrain.mask.dense_blocks=2: must be an integer from 0 to 1"),
    ({"model.depth": None, "pretrain.mask.dense_blocks": 3},  # tiny's depth 4: two in-blocks
     "pretrain.mask.dense_blocks=3: must be an integer from 0 to 2, the number of in-blocks of a depth-4 U-ViT"),
    ({"pretrain.mask.dense_blocks": -1}, "pretrain.mask.dense_blocks=-1: must be >= 0"),
    ({"diffusion.min_snr_gamma": 0.0}, "diffusion.min_snr_gamma=0.0: must be > 0"),
    ({"diffusion.min_snr_gamma": -5}, "diffusion.min_snr_gamma=-5: must be > 0"),
    ({"diffusion.loss_weighting": "p2"}, "diffusion.loss_weighting='p2': must be one of none, min_snr"),
    ({"pretrain.hflip": -0.1}, "pretrain.hflip=-0.1: must be in [0, 1]"),
    ({"baseline.hflip": 1.01}, "baseline.hflip=1.01: must be in [0, 1]"),
    ({"finetune.dense_blocks": 1}, "finetune.dense_blocks=1: unknown parameter"),  # a pre-training setting
    ({"sampel": {"steps": 3}}, "sampel.steps=3: unknown parameter"),
    # class-conditional models and guidance (docs/guidance.md)
    ({"sample.guidance_scale": 2}, "sample.guidance_scale=2 with sample.guidance=cfg needs model.class_conditional"),
    ({"sample.guidance": "auto"}, "sample.guidance='auto': must be one of cfg, sparse"),
    ({"sample.guidance_scale": -1}, "sample.guidance_scale=-1: must be >= 0"),
    ({"sample.guidance_interval": [5, 1]}, "sample.guidance_interval=[5, 1]: must be null (every step) or [lo, hi]"),
    ({"sample.sparse_mask_ratio": 1.0}, "sample.sparse_mask_ratio=1.0: must be in [0, 1)"),
    ({"model.class_conditional": True, "sample.classes": [1, 1]}, "sample.classes=[1, 1]: must be null (every class)"),
    ({"model.class_conditional": True, "sample.classes": ["all"]},
     "or a list of distinct class indices >= 0 and 'none'"),
    ({"model.class_conditional": True, "pretrain.data": "source"},
     "pretrain.use_labels=true with pretrain.data=source: the source images' labels are not the target's classes"),
    ({"finetune.label_dropout": 1.5}, "finetune.label_dropout=1.5: must be in [0, 1]"),
    ({"model.class_conditional": "yes"}, "model.class_conditional='yes': must be true or false"),
])
def test_each_fault_alone_is_named(smoke_params, changes, expected):
    """Each invalid value or name, on its own in an otherwise valid config, is refused by name."""
    with pytest.raises(ParameterError) as info:
        validate_parameters(_with(smoke_params, changes))
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError), "Python callers catch ParameterError as a ValueError"


@pytest.mark.parametrize("changes", [
    {"sample.sampler": "ddpm", "sample.steps": None},  # what the ddpm refusal tells the user to set
    {"sample.sampler": "ddpm", "sample.steps": 1000},
    {"pretrain.mask.kind": "crop", "pretrain.mask.crop_size": 2},
    {"pretrain.mask.kind": "block", "pretrain.mask.block_size": 2, "pretrain.mask.ratio": 0.5},
    {"trainer.device": "cuda", "trainer.nproc": 2},  # a GPU config still validates on a CPU machine
    {"pretrain.mask.dense_blocks": 1, "diffusion.loss_weighting": "min_snr", "diffusion.min_snr_gamma": 1,
     "pretrain.hflip": 1, "finetune.hflip": 0.5},  # all in-blocks dense; integers where numbers go
    {"model.depth": None, "pretrain.mask.dense_blocks": 2},  # tiny's own depth 4
    {"preprocess.workers": 3},  # more decoding processes than cores is allowed (speed only)
    {"model.class_conditional": True, "sample.guidance_scale": 3, "sample.classes": [0, "none"],
     "sample.guidance_interval": [0.3, float("inf")], "sample.guidance_sweep": []},
    {"sample.guidance": "sparse", "sample.guidance_scale": 2},  # guidance of an unconditional model
    {"model.class_conditional": True, "pretrain.data": "source", "pretrain.use_labels": False},
])
def test_valid_combinations_are_accepted(smoke_params, changes):
    """The cross-checks refuse only what cannot work: these settings pass."""
    validate_parameters(_with(smoke_params, changes))


def test_runtime_typo_is_named_as_a_command_line_parameter(smoke_params):
    """A typo given with --params is reported as such, so the user knows where to look."""
    with pytest.raises(ParameterError, match=r"finetune\.setps=10 \(from --params\): unknown parameter"):
        validate_parameters(smoke_params, runtime_params={"finetune": {"setps": 10}})


def test_a_command_line_typo_is_one_line_although_kedro_merged_it():
    """`--params pretrain.stepz=2000` reaches the validator twice (in the merged tree and as a
    runtime parameter): one problem, one line, naming it with its value and where it came from."""
    runtime = {"pretrain": {"stepz": 2000}, "sampel": {"steps": 3}}
    with pytest.raises(ParameterError) as info:
        validate_parameters(load_params(PROJECT_ROOT, "smoke", runtime_params=runtime), runtime_params=runtime)
    lines = str(info.value).splitlines()
    assert [line for line in lines if "stepz" in line] == [
        "  - pretrain.stepz=2000 (from --params): unknown parameter; did you mean pretrain.steps?"]
    assert [line for line in lines if "sampel" in line] == [
        "  - sampel.steps=3 (from --params): unknown parameter; did you mean sample.steps?"]


@pytest.mark.parametrize(("typed", "hint"), [
    ("pretrain.mask_ratio", "; did you mean pretrain.mask.ratio?"),  # the name before the mask was nested
    ("pretrain.dense_blocks", "; did you mean pretrain.mask.dense_blocks?"),
    ("trainer.nprocs", "; did you mean trainer.nproc?"),
    ("evaluate.fid.weight_path", "; did you mean evaluate.fid.weights_path?"),
    ("finetune.mask_ratio", " (a typo? every valid name is in conf/base/parameters*.yml)"),  # nothing close
])
def test_an_unknown_name_gets_the_closest_valid_one(typed, hint):
    """`--params <old or misspelt name>=0.5`: refused with the closest valid name, found among all
    of them (no table of old names), or with where to find them when none is close."""
    *block, key = typed.split(".")
    runtime: dict[str, Any] = {key: 0.5}
    for part in reversed(block):
        runtime = {part: runtime}
    with pytest.raises(ParameterError) as info:
        validate_parameters(load_params(PROJECT_ROOT, "smoke", runtime_params=runtime), runtime_params=runtime)
    assert str(info.value).splitlines()[1:] == [f"  - {typed}=0.5 (from --params): unknown parameter{hint}"]


@pytest.mark.parametrize("env_name", sorted(
    p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir() and p.name != "local"))
def test_every_shipped_environment_is_accepted(env_name):
    """The cross-checks never refuse a configuration the project ships (GPU ones included: whether
    a GPU is present is the training node's business, not the validator's)."""
    validate_parameters(load_params(PROJECT_ROOT, env_name))


def test_validation_is_fast_and_builds_no_model(smoke_params, monkeypatch):
    """Validation runs before every `kedro run`; it must not build a torch model."""
    import time

    import maskdm_pipeline.models.presets as presets

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("validation built a model")

    monkeypatch.setattr(presets, "build_uvit", no_model)
    validate_parameters(smoke_params)  # imports warm
    start = time.perf_counter()
    for _ in range(20):
        validate_parameters(smoke_params)
    assert (time.perf_counter() - start) / 20 < 0.05


# ----------------------------------------------------------------------------- node level
def test_finetune_refuses_a_checkpoint_of_another_resolution_preset_or_prediction(tiny_state, tmp_path):
    """A pre-trained checkpoint made at 8x8 with preset tiny and x0 prediction is refused by the
    finetune node, before any training, when the run asks for 16x16, another preset or another
    prediction target: one line naming each setting by its parameter with both values (the
    checkpoint's fingerprint record may be missing: a file copied in by hand), exit status 2."""
    from click import ClickException

    from maskdm_pipeline.datasets.checkpoint import CheckpointSlot
    from maskdm_pipeline.params import FinetuneParams
    from maskdm_pipeline.pipelines.finetune.nodes import finetune
    from maskdm_pipeline.training import DiffusionConfig, ModelParams

    smoke = load_params(PROJECT_ROOT, "smoke")
    model = {"preset": "tiny", **{k: TINY_MODEL[k] for k in ("patch_size", "embed_dim", "depth", "num_heads")}}
    slot = CheckpointSlot(tmp_path / "finetuned.resume.pt")
    images = {side: torch.zeros(4, 1, side, side, dtype=torch.uint8).numpy() for side in (8, 16)}
    cases = [
        (16, model, DIFFUSION, "preprocess.resolution 8 -> 16"),
        (8, {**model, "preset": "small-64"}, DIFFUSION, "model.preset 'tiny' -> 'small-64'"),
        (8, {**model, "embed_dim": None}, DIFFUSION, "model.embed_dim 16 -> (the preset's)"),
        (8, model, {**DIFFUSION, "prediction": "eps"}, "diffusion.prediction 'x0' -> 'eps'"),
    ]
    for size, model_params, diffusion, expected in cases:
        inputs = {"primary_train": {"images": images[size]}, "pretrained": tiny_state,
                  "params": FinetuneParams(**smoke["finetune"]), "model": ModelParams(**model_params),
                  "diffusion": DiffusionConfig(**{**smoke["diffusion"], **diffusion}), "trainer": smoke["trainer"],
                  "slot": slot}
        # Inputs the node may gain later (e.g. the quality probe's) are never reached.
        extra = {k: None for k in inspect.signature(finetune).parameters if k not in inputs}
        with pytest.raises(ValueError) as info:
            finetune(**inputs, **extra)
        message = str(info.value)
        # The source is named by its catalog entry: the node does not know (or hard-code) its path.
        assert "catalog entry 'pretrained'" in message and f"(made with -> this run: {expected})" in message, message
        assert "\n" not in message and "`kedro run --pipelines pretrain,finetune`" in message
        assert isinstance(info.value, ClickException) and info.value.exit_code == 2
        assert not Path(slot.path).exists(), "training started although the weights do not fit"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_cli_refuses_cuda_without_a_gpu_before_any_work(make_project):
    """`trainer.device=cuda` on a machine without a GPU: one Error: line, exit status 2, no node
    run (not even preprocessing, which would run first) and no file under data/ touched."""
    project = make_project()
    before = project.snapshot()
    code, output = project.run(params={"trainer.device": "cuda"}, timeout=120)
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert code == 2, output[-3000:]
    assert errors == ["Error: trainer.device='cuda': CUDA was requested but torch sees no GPU; use auto or "
                      "cpu. Nothing was run."], output[-3000:]
    assert "Traceback" not in output and "Running node" not in squash(output)
    assert "MLflow run" not in squash(output), "no MLflow run is opened for a run that cannot start"
    assert project.snapshot() == before


def test_the_device_check_looks_only_at_runs_that_use_the_device(monkeypatch):
    """In process: a run of nodes that read ``params:trainer`` is refused on a CUDA config without
    a GPU; preprocessing alone (no such node) is not, so a GPU config still preprocesses here."""
    from types import SimpleNamespace

    from maskdm_pipeline.hooks import DeviceCheckHook
    from maskdm_pipeline.training import TrainerConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hook = DeviceCheckHook()
    hook.after_context_created(SimpleNamespace(validated_params=SimpleNamespace(trainer=TrainerConfig(device="cuda"))))
    preprocess = SimpleNamespace(nodes=[SimpleNamespace(inputs=["raw_images", "params:preprocess"])])
    training = SimpleNamespace(nodes=[*preprocess.nodes, SimpleNamespace(inputs=["primary_train", "params:trainer"])])
    hook.before_pipeline_run(pipeline=preprocess)
    with pytest.raises(ParameterError, match=r"^trainer.device='cuda': CUDA was requested .* Nothing was run\.$"):
        hook.before_pipeline_run(pipeline=training)
    hook.after_context_created(SimpleNamespace(validated_params=SimpleNamespace(trainer=TrainerConfig(device="auto"))))
    hook.before_pipeline_run(pipeline=training)  # auto falls back to the CPU
