"""Class-conditional U-ViT and guidance (models/uvit.py's label token, diffusion/guidance.py,
generation.py's classes, fd_clf.class_accuracy, the refusals of params.py and the stages).

Toy denoisers check the guidance arithmetic exactly; the tiny real U-ViT (8x8, patch 2, 16 tokens)
checks shapes, masks and per-sample seeds. One torch thread throughout.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from maskdm_pipeline import fd_clf, generation
from maskdm_pipeline.diffusion import Guidance, GuidedDenoiser, PerSampleGenerator, make_schedule, noise_levels
from maskdm_pipeline.diffusion.samplers import call_times
from maskdm_pipeline.masking import sample_masks
from maskdm_pipeline.metrics import classifier_state, train_classifier
from maskdm_pipeline.models import build_uvit, count_parameters
from maskdm_pipeline.models.flops import uvit_flops
from maskdm_pipeline.models.uvit import LABEL_EMBEDDING
from maskdm_pipeline.params import ParameterError, SampleParams, validate_parameters
from maskdm_pipeline.train_stage import UnlabelledDataError, num_classes
from maskdm_pipeline.training.builders import load_init_weights

TINY = {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2}
SCHEDULE = make_schedule("linear")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _uvit(num_classes: int = 0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_uvit("tiny", **TINY, num_classes=num_classes).eval()


# ----------------------------------------------------------------------------- the label token
def test_unconditional_model_is_unchanged_and_conditional_adds_one_table() -> None:
    plain, conditional = _uvit(), _uvit(num_classes=4)
    assert not plain.conditional and plain.label_emb is None and plain.extra_tokens == 1
    extra = set(conditional.state_dict()) - set(plain.state_dict())
    assert extra == {LABEL_EMBEDDING} and set(plain.state_dict()) <= set(conditional.state_dict())
    assert conditional.state_dict()[LABEL_EMBEDDING].shape == (5, 32)  # K + 1 rows: row K is "no label"
    assert count_parameters(conditional) == count_parameters(plain) + 5 * 32
    # The same seed, the same weights but the label table: conditional vs unconditional from one start.
    assert all(torch.equal(v, conditional.state_dict()[k]) for k, v in plain.state_dict().items())
    assert conditional.null_class == 4 and conditional.extra_tokens == 2
    with pytest.raises(ValueError, match="unconditional"):
        plain.null_class  # noqa: B018


def test_label_token_shapes_and_none_is_the_no_label_class() -> None:
    model = _uvit(num_classes=4)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10, 500, 990])
    with torch.no_grad():
        out = model(x, t, labels=torch.tensor([0, 1, 4]))
        assert out.shape == (3, 1, 8, 8)
        assert torch.equal(model(x, t), model(x, t, labels=torch.full((3,), 4)))
        zeros, ones = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
        assert not torch.allclose(model(x, t, labels=zeros), model(x, t, labels=ones))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        model(x, t, labels=torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="shape"):
        model(x, t, labels=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="takes no labels"):
        _uvit()(x, t, labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("dense_blocks", [0, 1])
def test_masks_never_drop_the_label_or_time_token(dense_blocks: int) -> None:
    """The blocks after the drop see 2 + N_visible tokens (label, time, visible patches), the
    output has the visible patches only, and the label still steers them."""
    model = _uvit(num_classes=4)
    seen = []
    model.mid_block.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([100, 100])
    mask = sample_masks("patch", 4, 2, ratio=0.75, generator=torch.Generator().manual_seed(0))  # 4 of 16 visible
    with torch.no_grad():
        a = model(x, t, mask, labels=torch.tensor([0, 1]), dense_blocks=dense_blocks)
        b = model(x, t, mask, labels=torch.tensor([2, 3]), dense_blocks=dense_blocks)
    assert a.shape == (2, 4, 4) and seen == [2 + 4, 2 + 4]
    assert not torch.allclose(a, b)


def test_flops_count_the_label_token_in_every_block() -> None:
    """The one FLOP counter (models/flops.py) grows by the per-token layers of every block for each
    extra visible token, and counts the label token of a conditional model in every block."""
    model = _uvit(num_classes=4)
    d, blocks = 32, 3
    one_more = uvit_flops(model, 5).forward - uvit_flops(model, 4).forward
    per_token = blocks * 24 * d * d + 4 * d * d  # per-token layers of 3 blocks + 1 long skip
    attention = blocks * 4 * d * ((7 * 7) - (6 * 6))  # 4 L^2 D at L = 2 + 5 vs 2 + 4
    assert one_more == per_token + attention + 2 * d * 4  # + the head on one more token
    assert uvit_flops(model).forward == uvit_flops(model, 16).forward > uvit_flops(model, 4).forward
    assert uvit_flops(_uvit()).forward < uvit_flops(model).forward  # one token fewer per block


# ----------------------------------------------------------------------------- guidance arithmetic
class ToyDenoiser(nn.Module):
    """A 'network' whose answer is known: the label's value everywhere (no label: -1), plus 0.5
    on the patches a mask keeps (a weak pass), recording each call's mask."""

    conditional, num_classes, patch_size, in_chans, grid_size, num_patches = True, 4, 2, 1, 4, 16

    def __init__(self, conditional: bool = True) -> None:
        super().__init__()
        self.conditional = conditional
        self.calls: list[torch.Tensor | None] = []

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x, t, mask=None, labels=None):
        self.calls.append(mask)
        value = torch.zeros(x.shape[0]) if labels is None else labels.float()
        value = torch.where(value == self.num_classes, -1.0, value)
        if mask is None:
            return value[:, None, None, None].expand_as(x).clone()
        visible = int((~mask[0]).sum())
        return (value[:, None, None] + 0.5).expand(x.shape[0], visible, 4).clone()


def _guided(model, guidance, labels=(1, 2)) -> torch.Tensor:
    denoiser = GuidedDenoiser(model, guidance, SCHEDULE, None if labels is None else torch.tensor(labels),
                              PerSampleGenerator(0, range(2)))
    return denoiser(torch.zeros(2, 1, 8, 8), torch.tensor([500, 500]))


def test_scale_one_is_the_conditional_pass_alone() -> None:
    model = ToyDenoiser()
    out = _guided(model, Guidance(1.0, "cfg"))
    assert torch.equal(out[:, 0, 0, 0], torch.tensor([1.0, 2.0])) and model.calls == [None]


@pytest.mark.parametrize("w", [0.0, 2.0, 3.5])
def test_cfg_is_uncond_plus_w_times_cond_minus_uncond(w: float) -> None:
    out = _guided(ToyDenoiser(), Guidance(w, "cfg"))
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -1.0])
    assert torch.allclose(out[:, 0], (uncond + w * (cond - uncond))[:, None, None].expand(2, 8, 8))


def test_guidance_interval_is_in_sigma() -> None:
    """(lo, hi] of sigma_t = sqrt((1 - abar_t) / abar_t): outside, the strong pass runs alone."""
    sigma = noise_levels(SCHEDULE)[500]
    model = ToyDenoiser()
    inside = _guided(model, Guidance(2.0, "cfg", interval=(sigma - 0.01, sigma)))
    assert inside[0, 0, 0, 0] == -1 + 2 * (1 - -1) and len(model.calls) == 2
    model = ToyDenoiser()
    outside = _guided(model, Guidance(2.0, "cfg", interval=(sigma, sigma + 1.0)))  # lo is open
    assert outside[0, 0, 0, 0] == 1.0 and model.calls == [None]
    abar = float(SCHEDULE.alphas_cumprod[500])
    assert math.isclose(sigma, math.sqrt((1 - abar) / abar))


@pytest.mark.parametrize("conditional", [True, False])
def test_sparse_guidance_is_the_same_network_at_the_asked_ratio(conditional: bool) -> None:
    """The weak pass is the same module with the same label on floor(r N) masked patches; only the
    patches it sees are guided, the others keep the strong prediction; an unconditional model too."""
    model = ToyDenoiser(conditional)
    labels = (1, 2) if conditional else None
    out = _guided(model, Guidance(3.0, "sparse", sparse_mask_ratio=0.75), labels=labels)
    strong, weak_mask = model.calls[0], model.calls[1]
    assert strong is None and weak_mask.shape == (2, 16) and weak_mask.sum(1).tolist() == [12, 12]
    cond = torch.tensor([1.0, 2.0]) if conditional else torch.zeros(2)
    tokens = out.reshape(2, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(2, 16, 4)  # patchify, p = 2
    for row in range(2):
        guided = cond[row] - 0.5 * (3.0 - 1)  # weak + w (strong - weak) with weak = strong + 0.5
        assert torch.allclose(tokens[row, ~weak_mask[row]], torch.full((4, 4), float(guided)))
        assert torch.allclose(tokens[row, weak_mask[row]], torch.full((12, 4), float(cond[row])))


def test_cfg_of_an_unconditional_model_is_refused() -> None:
    with pytest.raises(ValueError, match="sample.guidance=cfg .* needs a class-conditional model"):
        _guided(ToyDenoiser(conditional=False), Guidance(2.0, "cfg"), labels=None)
    with pytest.raises(ValueError, match=r"sample.sparse_mask_ratio=1.0 must be in \[0, 1\)"):
        Guidance(2.0, "sparse", sparse_mask_ratio=1.0).check(_uvit())


def test_sampling_flops_per_mode() -> None:
    model, times = _uvit(num_classes=4), call_times("dpm++2m", SCHEDULE, 10)
    full, sparse_pass = uvit_flops(model).forward, uvit_flops(model, 4).forward
    cost = generation.sampling_cost
    kw = {"schedule": "linear", "sampler": "dpm++2m", "steps": 10}
    assert len(times) == 10 and cost(model, **kw) == 10 * full
    assert cost(model, guidance=Guidance(2.0, "cfg"), **kw) == 20 * full
    assert cost(model, guidance=Guidance(2.0, "sparse", sparse_mask_ratio=0.75), **kw) == 10 * (full + sparse_pass)
    sigmas = noise_levels(SCHEDULE)
    half = Guidance(2.0, "cfg", interval=(0.0, sigmas[times[5]]))  # the 5 lowest-noise calls
    assert cost(model, guidance=half, **kw) == 15 * full


# ----------------------------------------------------------------------------- sampling classes
SAMPLING = {"num_samples": 7, "schedule": "linear", "prediction": "x0", "sampler": "ddim", "steps": 3, "eta": 1.0,
            "seed": 5, "device": "cpu"}


@pytest.mark.parametrize("guidance", [Guidance(2.0, "cfg"), Guidance(2.0, "sparse", sparse_mask_ratio=0.5)])
def test_each_sample_keeps_its_seed_and_class_whatever_the_batch(guidance: Guidance) -> None:
    model = _uvit(num_classes=4)
    classes = [3, 1, 4]  # 4: no label
    whole = generation.generate(model, batch_size=7, classes=classes, guidance=guidance, **SAMPLING)[0]
    for batch_size in (1, 3):
        part = generation.generate(model, batch_size=batch_size, classes=classes, guidance=guidance, **SAMPLING)[0]
        assert np.array_equal(part, whole), batch_size
    assert generation.class_labels(range(7), classes).tolist() == [3, 1, 4, 3, 1, 4, 3]
    other = generation.generate(model, batch_size=7, classes=[0, 1, 4], guidance=guidance, **SAMPLING)[0]
    assert np.array_equal(other[2::3], whole[2::3]) and not np.array_equal(other[0], whole[0])


def test_classes_resolve_against_the_checkpoint() -> None:
    conditional = _uvit(num_classes=4)
    assert generation.resolve_classes(conditional, None) == [0, 1, 2, 3]
    assert generation.resolve_classes(conditional, ("none", 2)) == [4, 2]
    assert generation.resolve_classes(_uvit(), None) is None
    params = SampleParams(sampler="ddim", steps=3, eta=1.0, num_samples=4, batch_size=4, seed=0, classes=[3])
    with pytest.raises(ParameterError, match=r"^sample.classes=\[3\]: this checkpoint was trained without") as info:
        params.for_model(_uvit())
    assert "\n" not in str(info.value)
    with pytest.raises(ParameterError, match=r"has 4 classes .* \[7\] are not among them"):
        params.model_copy(update={"classes": (7,)}).for_model(conditional)


def test_class_grid_has_one_row_per_class() -> None:
    images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1).repeat(2, 2).repeat(2, 3)
    labels = np.array([0, 1, 0, 1, 0, 1])
    grid = generation.class_grid(images, labels, [1, 0], columns=3)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1)
    assert [grid[1, 1], grid[1, 4], grid[4, 1]] == [1, 3, 0]  # row 0: class 1's samples 1, 3, 5


# ----------------------------------------------------------------------------- class accuracy
def _quadrants(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, (n, 1, 8, 8), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, 0, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] += 180
    return images, labels


def test_class_accuracy_counts_the_asked_class() -> None:
    images, labels = _quadrants()
    classifier = {"available": True, **classifier_state(train_classifier(images, labels, epochs=3, seed=0))}
    right = fd_clf.class_accuracy(images, labels, classifier)
    assert right["class_accuracy"] > 0.9 and right["class_accuracy_n"] == 160
    assert set(right["class_accuracy_per_class"]) == {"0", "1", "2", "3"}
    wrong = fd_clf.class_accuracy(images, (labels + 1) % 4, classifier)
    assert wrong["class_accuracy"] < 0.1
    asked = labels.copy()
    asked[::2] = fd_clf.UNLABELLED
    assert fd_clf.class_accuracy(images, asked, classifier)["class_accuracy_n"] == 80
    none = fd_clf.class_accuracy(images, np.full(160, fd_clf.UNLABELLED), classifier)
    assert none["class_accuracy"] is None and "no sample was asked" in none["class_accuracy_reason"]
    missing = fd_clf.class_accuracy(images, labels, {"available": False, "reason": "no labels"})
    assert missing["class_accuracy"] is None and missing["class_accuracy_reason"] == "no labels"


# ----------------------------------------------------------------------------- refusals, fine-tuning
def test_conditional_training_on_unlabelled_data_stops_in_one_line() -> None:
    images = np.zeros((4, 1, 8, 8), np.uint8)
    with pytest.raises(UnlabelledDataError) as info:
        num_classes("pretrain", {"images": images, "labels": None})
    message = str(info.value)
    assert message.startswith("pretrain: model.class_conditional=true, but the training images have no class labels")
    assert "\n" not in message and info.value.exit_code == 2
    assert num_classes("finetune", {"images": images, "labels": np.array([0, 3, 1, 1])}) == 4


def test_parameters_that_need_a_conditional_model_are_refused_before_any_work() -> None:
    from kedro_project import load_params

    params = load_params(runtime_params={"sample": {"classes": [1], "guidance_scale": 2.0}})
    with pytest.raises(ParameterError) as info:
        validate_parameters(params)
    lines = str(info.value).splitlines()
    assert any(line.strip().startswith("- sample.classes=[1]: the model is unconditional") for line in lines)
    assert any("sample.guidance_scale=2 with sample.guidance=cfg needs model.class_conditional=true" in line
               for line in lines)
    params = load_params(runtime_params={"model": {"class_conditional": True},
                                         "pretrain": {"data": "source"}, "sample": {"guidance": "sparse"}})
    with pytest.raises(ParameterError, match="pretrain.use_labels=true with pretrain.data=source"):
        validate_parameters(params)


def test_a_conditional_model_starts_from_unconditional_weights_with_a_fresh_label_table() -> None:
    plain, conditional = _uvit(seed=1), _uvit(num_classes=4, seed=2)
    fresh = conditional.label_emb.weight.detach().clone()
    load_init_weights(conditional, plain.state_dict(), "finetune")
    after = conditional.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in plain.state_dict().items())
    assert torch.equal(after[LABEL_EMBEDDING], fresh)
    with pytest.raises(ValueError, match="init_weights do not fit"):  # the other way round stays strict
        load_init_weights(_uvit(), conditional.state_dict(), "finetune")


def test_the_sweep_reuses_the_sample_stages_images_only_when_drawn_with_its_settings() -> None:
    from maskdm_pipeline.pipelines.evaluate.nodes import _drawn_so

    sample = SampleParams(sampler="dpm++2m", steps=25, eta=0.0, num_samples=256, batch_size=256, seed=1,
                          guidance_scale=2.0, classes=[3, "none"])
    info = {"sampler": "dpm++2m", "steps": 25, "eta": 0.0, "seed": 1, "guidance": "cfg", "guidance_scale": 2.0,
            "guidance_interval": None, "sparse_mask_ratio": None, "classes": [3, "none"]}
    names = generation.class_names([3, 4], _uvit(num_classes=4))
    assert names == [3, "none"] and _drawn_so(info, sample, names)
    for changed in ({"seed": 2}, {"guidance_scale": 3.0}, {"classes": [3]}, {"guidance": "sparse"}):
        assert not _drawn_so({**info, **changed}, sample, names), changed
    unguided = {k: v for k, v in info.items() if not k.startswith(("guidance", "sparse"))}
    sparse_at_one = sample.model_copy(update={"guidance": "sparse", "guidance_scale": 1.0})
    assert _drawn_so(unguided, sparse_at_one, names), "w = 1 is unguided whatever the mode"
