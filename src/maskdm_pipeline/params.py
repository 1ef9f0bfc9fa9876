"""The parameter schema: every parameter of ``conf/*/parameters*.yml`` as one typed tree.

Kedro merges ``conf/base``, the ``--env`` environment and ``--params``;
``project.ProjectContext`` checks the result with :class:`Params` (:func:`validate_parameters`)
once per run, as the context is made (before any hook, the catalog or a node), whatever
``--pipelines`` selects. Every problem is listed at once, one line each, starting with the dotted
name and the value given, e.g. ``pretrain.mask.ratio=1.5: must be in [0, 1)``, an unknown name
with the closest valid one; the run stops with exit status 2 (:class:`ParameterError`).

Each block is a frozen pydantic model (``extra="forbid"``: a misspelt name is refused; strict:
``steps: true`` is not 1). Every node takes its blocks as these models (``params:pretrain`` is a
:class:`PretrainParams`, ``params:trainer`` a ``TrainerConfig``, built by Kedro with the same
classes), so once :class:`Params` has accepted the tree, Kedro's own per-pipeline validation
cannot refuse it.
Rules that involve several blocks (the patch grid, masks against the grid, the dense blocks
against the model's depth, the batch against ``trainer.nproc``, the sampler's steps) are checked
once, in :meth:`Params._fit_together`, with the checks of the modules that own them. Pure: no
Kedro import (click, for the error type only).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import types
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from click import ClickException
from pydantic import BaseModel, BeforeValidator, Field, ValidationError, model_validator

from maskdm_pipeline.diffusion.guidance import GUIDANCE_MODES, Guidance
from maskdm_pipeline.diffusion.samplers import SAMPLERS, validate_sampling
from maskdm_pipeline.dotted import flatten
from maskdm_pipeline.generation import NO_LABEL, resolve_classes
from maskdm_pipeline.training.config import (
    DiffusionConfig,
    Frozen,
    MaskConfig,
    ModelParams,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    StageConfig,
    TrainerConfig,
    check_compatible,
    interval,
)

__all__ = ["MODEL_DEFINING", "BaselineParams", "CacheParams", "EvaluateParams", "FinetuneParams", "ParameterError",
           "Params", "PreprocessParams", "PretrainParams", "ProjectPath", "SampleParams", "StageParams", "closest",
           "defines_the_model", "describe", "names_a_path", "parameter_fields", "parameter_names",
           "validate_parameters"]


SampleCount = Annotated[int, Field(ge=2)]  # a Frechet distance needs a covariance: N >= 2


class _PathMarker:
    """Marks a parameter that names a file or folder (see :data:`ProjectPath`)."""

    def __repr__(self) -> str:
        return "ProjectPath"


_PATH = _PathMarker()
# A parameter that names a file or folder. A relative value means relative to the project root,
# wherever Kedro was started (a notebook in notebooks/, `kedro run` in a sub-folder), like the
# catalog's `filepath`s, which Kedro itself resolves; `~` is the user's home. Resolved once per
# run by project.ProjectContext with resolve_path_parameters, so the nodes see absolute paths.
ProjectPath = Annotated[str, _PATH]


def names_a_path(annotation: Any) -> bool:
    """Whether a field's annotation is :data:`ProjectPath`, alone or in a union (``| None``)."""
    if get_origin(annotation) is Annotated and any(m is _PATH for m in annotation.__metadata__):
        return True
    return any(names_a_path(arg) for arg in get_args(annotation))


class ParameterError(ClickException, ValueError):
    """An unknown parameter name or an invalid value; the message names the parameter.

    A ``ValueError`` for Python callers. Also a ``click.ClickException`` (click is Kedro's
    CLI library, not Kedro): ``kedro run`` then prints ``Error: <the message>`` and exits with
    status 2 (a usage error) instead of a screen of traceback that hides the one line that
    matters.
    """

    exit_code = 2


# ---------------------------------------------------------------------------- preprocess
def _crop(value: Any) -> Any:
    if value in ("none", "center", None):
        return value
    if isinstance(value, list | tuple) and len(value) == 4 and all(
            type(i) is int and i >= 0 for i in value):
        if value[2] > 0 and value[3] > 0:
            return list(value)
        raise ValueError("box height and width must be > 0")
    raise ValueError("must be none, center or [top, left, height, width]")


def _subset(value: Any) -> Any:
    if value is None:
        return value
    if type(value) is float:
        if 0 < value <= 1:
            return value
        raise ValueError("a fraction must be in (0, 1]")
    if type(value) is int:
        if value >= 1:
            return value
        raise ValueError("a count must be >= 1")
    raise ValueError("must be null, a fraction in (0, 1] or a count >= 1")


class PreprocessParams(Frozen):
    """Every source image -> uint8 (channels, resolution, resolution) (pipelines/preprocess)."""

    resolution: PositiveInt
    channels: Literal[1, 3]
    crop: Annotated[Any, BeforeValidator(_crop)]
    heldout_fraction: interval(0, 1, low_open=True, high_open=True)
    subset: Annotated[Any, BeforeValidator(_subset)]
    min_size: NonNegativeInt
    alpha_background: NonNegativeInt
    labels: Literal["none", "subfolder"]
    seed: NonNegativeInt
    workers: PositiveInt | None = None  # decoding processes (None: one per core); speed only


# ---------------------------------------------------------------------------- training stages
class StageParams(StageConfig):
    """A training stage's block: the engine's recipe (training/config.py) plus the keys that
    steer its node: ``resume`` from the stage's resume checkpoint, and the number of samples of
    the periodic fd_clf probe."""

    resume: bool = True
    eval_num_samples: SampleCount = 256

    def stage_config(self) -> StageConfig:
        """The engine's part (already validated, so not validated again)."""
        return StageConfig.model_construct(**self.model_dump(include=set(StageConfig.model_fields)))


class PretrainParams(StageParams):
    """Masked pre-training: the engine's ``mask`` (``pretrain.mask.kind``, ``.ratio``,
    ``.block_size``, ``.crop_size`` and ``.dense_blocks``: k in-blocks on all tokens before the
    drop, dense-first masking; 0 is MaskDM), and the data to pre-train on (``target``: the
    training split; ``source``: the catalog entry ``raw_pretrain_images``, for transfer runs).

    ``use_labels`` (a class-conditional model only): pre-train the conditional model with the
    labels (true), or an unconditional one on the images alone (false), which fine-tuning then
    turns conditional with a fresh label embedding (``training.builders.load_init_weights``)."""

    data: Literal["target", "source"] = "target"
    mask: MaskConfig = MaskConfig()  # the defaults, METHOD.md section 2
    use_labels: bool = True


class FinetuneParams(StageParams):
    """Fine-tuning from the raw (the official choice) or the EMA pre-trained weights."""

    init_from: Literal["raw", "ema"] = "raw"


class BaselineParams(StageParams):
    """The from-scratch baseline: the fine-tuning recipe from random weights."""


# ---------------------------------------------------------------------------- sample, evaluate
def _interval(value: Any) -> Any:
    if value is None:
        return value
    ok = isinstance(value, list | tuple) and len(value) == 2 and all(
        type(v) in (int, float) and v == v for v in value)
    if not ok or not 0 <= value[0] < value[1]:
        raise ValueError("must be null (every step) or [lo, hi] with 0 <= lo < hi, noise levels sigma "
                         "(e.g. [0.3, 5.0]; .inf for no upper end)")
    return tuple(float(v) for v in value)


def _classes(value: Any) -> Any:
    if value is None:
        return value
    ok = isinstance(value, list | tuple) and len(value) > 0 and all(
        (type(c) is int and c >= 0) or c == NO_LABEL for c in value)
    if not ok or len(set(value)) != len(value):
        raise ValueError(f"must be null (every class) or a list of distinct class indices >= 0 and "
                         f"'{NO_LABEL}' (the no-label class: unconditional samples), e.g. [3, 7] or [{NO_LABEL}]")
    return tuple(value)


class SampleParams(Frozen):
    """Sampling from the EMA weights (pipelines/sample); ``steps`` null: every step (ddpm).

    Guidance (diffusion/guidance.py): ``guidance_scale`` w (1: none; uncond + w (cond - uncond)),
    ``guidance`` the weak branch (``cfg``: the no-label pass; ``sparse``: the same label on a
    random 1 - ``sparse_mask_ratio`` of the patches, also for an unconditional model),
    ``guidance_interval`` the noise levels sigma (lo, hi] where it acts (null: every step).
    ``classes``: which classes a class-conditional model draws, sample i the i-th modulo their
    count (null: every class, balanced); ``none`` is the "no label" class. ``guidance_sweep``: the
    scales w of the evaluate stage's sweep (an empty list: no sweep)."""

    sampler: Literal[SAMPLERS]
    steps: PositiveInt | None
    eta: NonNegativeFloat
    num_samples: PositiveInt
    batch_size: PositiveInt
    seed: NonNegativeInt
    guidance: Literal[GUIDANCE_MODES] = "cfg"
    guidance_scale: NonNegativeFloat = 1.0
    guidance_interval: Annotated[Any, BeforeValidator(_interval)] = None
    sparse_mask_ratio: interval(0, 1, high_open=True) = 0.75
    classes: Annotated[Any, BeforeValidator(_classes)] = None
    guidance_sweep: list[NonNegativeFloat] = []

    def guidance_settings(self, scale: float | None = None) -> Guidance:
        """The sampler's :class:`~maskdm_pipeline.diffusion.Guidance` (at ``scale``, default
        ``guidance_scale``)."""
        return Guidance(self.guidance_scale if scale is None else scale, self.guidance,
                        self.guidance_interval, self.sparse_mask_ratio)

    def for_model(self, model: Any, scale: float | None = None) -> tuple[list[int] | None, Guidance]:
        """(the classes to draw, the guidance at ``scale``) for a trained model, checked against it
        (``generation.resolve_classes``, ``Guidance.check``): what the sample and evaluate stages
        draw with.

        Raises:
            ParameterError: classes or guidance the checkpoint cannot take (one line, exit status 2).
        """
        try:
            classes = resolve_classes(model, self.classes)
            guidance = self.guidance_settings(scale)
            guidance.check(model)
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        return classes, guidance


class FidParams(Frozen):
    """FID with pytorch-fid's Inception weights (metrics/inception.py)."""

    enabled: bool
    weights_path: ProjectPath | None
    allow_download: bool
    dims: Literal[64, 192, 768, 2048]  # pytorch-fid's InceptionV3.BLOCK_INDEX_BY_DIM
    batch_size: PositiveInt


class FdClfParams(Frozen):
    """The Frechet distance on the in-pipeline classifier's features, at a fixed sample count."""

    enabled: bool
    num_samples: SampleCount
    epochs: PositiveInt
    seed: NonNegativeInt


class EvaluateParams(Frozen):
    """The quality metrics (pipelines/evaluate)."""

    fid: FidParams
    fd_clf: FdClfParams


class CacheParams(Frozen):
    """The cache (``maskdm_pipeline.caching``). Not part of any fingerprint: no node reads it.

    ``rerun``: a stage name (``pretrain``, ...) or ``all`` forces that stage to run even when its
    outputs are up to date (``--params cache.rerun=pretrain``); the names are checked against the
    registered pipelines before anything runs. null: the cache decides alone."""

    rerun: str | None = None


# ---------------------------------------------------------------------------- the whole tree
class Params(Frozen):
    """The merged parameter tree of a run: every block is required (conf/base declares them all)."""

    preprocess: PreprocessParams
    model: ModelParams
    diffusion: DiffusionConfig
    trainer: TrainerConfig
    pretrain: PretrainParams
    finetune: FinetuneParams
    baseline: BaselineParams
    sample: SampleParams
    evaluate: EvaluateParams
    cache: CacheParams = CacheParams()

    @model_validator(mode="after")
    def _fit_together(self) -> Params:
        """Rules across blocks; each message comes from the module that owns the rule. Fast:
        no model is built."""
        from maskdm_pipeline.diffusion.schedules import make_schedule
        from maskdm_pipeline.models.presets import PRESETS
        from maskdm_pipeline.models.uvit import check_dense_blocks

        problems: list[str] = []

        def attempt(check: Any, *args: Any, **kwargs: Any) -> None:
            try:
                check(*args, **kwargs)
            except ValueError as exc:
                problems.append(str(exc))

        # The model's image size is preprocess.resolution (ModelParams.for_images).
        resolution, model = self.preprocess.resolution, self.model
        patch = model.patch_size or PRESETS[model.preset]["patch_size"]
        if resolution % patch:
            source = "model.patch_size" if model.patch_size else f"model.preset={model.preset!r}"
            problems.append(
                f"preprocess.resolution={resolution} is not divisible by the patch size {patch} "
                f"(from {source}); pick a multiple of {patch}, e.g. {max(patch, resolution // patch * patch)}")
        else:
            attempt(self.pretrain.mask.check, resolution // patch, "pretrain")
        depth = model.depth or PRESETS[model.preset]["depth"]
        attempt(check_dense_blocks, self.pretrain.mask.dense_blocks, depth, "pretrain.mask")
        attempt(self.trainer.check_nodes)
        for name in ("pretrain", "finetune", "baseline"):
            attempt(check_compatible, getattr(self, name), self.trainer, name)
        T = inspect.signature(make_schedule).parameters["T"].default  # T is fixed, not a parameter
        attempt(validate_sampling, self.sample.sampler, self.sample.steps, T, self.sample.eta)
        problems += self._conditional_problems(resolution // patch if not resolution % patch else None)
        if problems:
            raise ValueError("\n".join(problems))
        return self


    def _conditional_problems(self, grid: int | None) -> list[str]:
        """Class-conditional and guidance settings that cannot work together (the model's classes
        are checked against the checkpoint by the sample stage, which knows them)."""
        sample, conditional = self.sample, self.model.class_conditional
        problems = []
        if sample.classes is not None and not conditional:
            problems.append(f"sample.classes={list(sample.classes)}: the model is unconditional "
                            "(model.class_conditional=false) and takes no class; remove sample.classes or set "
                            "model.class_conditional=true")
        if sample.guidance == "cfg" and sample.guidance_scale != 1 and not conditional:
            problems.append(f"sample.guidance_scale={sample.guidance_scale:g} with sample.guidance=cfg needs "
                            "model.class_conditional=true (cfg's weak branch is the no-label pass); use "
                            "sample.guidance=sparse to guide an unconditional model")
        if conditional and self.pretrain.use_labels and self.pretrain.data == "source":
            problems.append("pretrain.use_labels=true with pretrain.data=source: the source images' labels are "
                            "not the target's classes; set pretrain.use_labels=false (pre-train unconditionally, "
                            "fine-tune with the labels)")
        if grid is not None and sample.guidance == "sparse":
            try:
                Guidance(mode="sparse", sparse_mask_ratio=sample.sparse_mask_ratio).check_ratio(grid)
            except ValueError as exc:
                problems.append(str(exc))
        return problems


# The settings that decide what a model is: the image geometry it is built for (its ``img_size`` and
# ``in_chans`` come from the images, ModelParams.for_images), its architecture, and what the network
# computes (the schedule and prediction target). A stage that builds a model from the settings
# cannot use weights or images made under other values of these (caching/fit.py refuses the run);
# any other setting makes an input older, not unfit. The loss's weighting and the mask shape how
# weights were trained, not what they are (pipelines/finetune/nodes.py).
MODEL_DEFINING = ("preprocess.resolution", "preprocess.channels", "model.*", "diffusion.schedule",
                  "diffusion.prediction")


def defines_the_model(name: str) -> bool:
    """Whether the dotted parameter ``name`` is one of :data:`MODEL_DEFINING`."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_DEFINING)


def validate_parameters(params: Mapping[str, Any],
                        runtime_params: Mapping[str, Any] | None = None) -> Params:
    """The validated tree, or :class:`ParameterError` listing every problem.

    ``runtime_params`` (the ``--params`` of ``kedro run``) are only checked for unknown names,
    so that a typo there is reported as a command-line parameter: once, although Kedro has also
    merged it into ``params`` (one problem, one line).
    """
    typos = {name: value for name, value in flatten(runtime_params or {}).items() if not _is_known(name)}
    problems = [_unknown(name, value, " (from --params)") for name, value in typos.items()]
    try:
        validated = Params.model_validate(dict(params))
    except ValidationError as exc:
        problems += describe(exc, reported=typos.keys())
    if problems:
        raise ParameterError("Invalid parameters, nothing was run:\n  - " + "\n  - ".join(problems))
    return validated


# ---------------------------------------------------------------------------- messages
_WHY = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "model_type": "must be a mapping of parameters",
    "tuple_type": "must be a list",
}


def describe(exc: ValidationError, prefix: str = "", reported: Collection[str] = ()) -> list[str]:
    """The lines a user reads for a refusal, ``name=value: why``, names prefixed with ``prefix``
    (e.g. ``pretrain`` for a :class:`PretrainParams` validated on its own); the unknown names in
    ``reported`` are left out (already named as ``--params`` typos)."""
    return [line for error in exc.errors() for line in _lines(error, prefix, reported)]


def closest(given: str, valid: Iterable[str], n: int = 1) -> list[str]:
    """The ``n`` valid names closest to ``given``, best first, among those that are close: a
    general close match (no table of old or misspelt names to keep), for parameters and for every
    other name a user types (``console.choices``). The cutoff, 0.8 of difflib's ratio, is above
    what a shared block name alone scores (``finetune.mask_ratio`` is 0.7 from
    ``finetune.ema_decay``) and below a typo or a renamed key (0.89 and up)."""
    return difflib.get_close_matches(given, list(valid), n=n, cutoff=0.8)


def parameter_names() -> list[str]:
    """Every dotted name of a parameter (not of a block), in schema order."""
    return [n for n, annotation in parameter_fields().items() if _block(annotation) is None]


def _unknown(name: str, value: Any, origin: str = "") -> str:
    """``name=value: unknown parameter; did you mean <the closest valid name>?`` (:func:`closest`)."""
    close = closest(name, parameter_names())
    hint = f"; did you mean {close[0]}?" if close else " (a typo? every valid name is in conf/base/parameters*.yml)"
    return f"{name}={value!r}{origin}: unknown parameter{hint}"


def _lines(error: Mapping[str, Any], prefix: str, reported: Collection[str]) -> list[str]:
    loc = [str(part) for part in error["loc"]]
    name = ".".join([prefix, *loc] if prefix else loc)
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return [_unknown(leaf, leaf_value) for leaf, leaf_value in flatten({name: value}).items()
                if leaf not in reported]
    if kind == "missing":
        return [f"{name}: missing; every parameter is listed in conf/base/parameters*.yml"]
    if kind == "value_error" and not loc:  # Params._fit_together: lines written by the owners
        return str(ctx["error"]).splitlines()
    if kind == "value_error":
        why = str(ctx["error"])
    elif kind == "finite_number":
        why = "must be a number" if value != value else "must be a finite number"  # NaN != NaN
    elif kind == "literal_error":  # ctx: "'a', 'b' or 'c'" -> "a, b, c"
        why = "must be one of " + ctx["expected"].replace(" or ", ", ").replace("'", "")
    else:
        why = _WHY.get(kind, error["msg"]).format(**ctx)
    return [f"{name}={value!r}: {why}"]


def _is_known(name: str) -> bool:
    """Whether a dotted name is a parameter (or a block) of :class:`Params`."""
    return name in parameter_fields()


@functools.cache
def parameter_fields() -> dict[str, Any]:
    """Every dotted name of :class:`Params`, blocks included, with its annotation
    (``{"preprocess": PreprocessParams, "preprocess.resolution": int, ...}``), in schema order."""
    def walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Any]]:
        for name, field in model.model_fields.items():
            yield f"{prefix}{name}", field.annotation
            if (block := _block(field.annotation)) is not None:
                yield from walk(block, f"{prefix}{name}.")

    return dict(walk(Params, ""))


def _block(annotation: Any) -> type[BaseModel] | None:
    """The parameter block an annotation names (``X | None`` -> X), or None for a value."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None

