"""Min-SNR-gamma loss weighting (issue 17 item 3; Hang et al., ICCV 2023) for eps, x0 and v."""

from __future__ import annotations

import math

import pytest
import torch

from maskdm_pipeline.diffusion import (
    LOSS_WEIGHTINGS,
    PREDICTIONS,
    SCHEDULES,
    DenoisingLoss,
    MaskedDenoisingLoss,
    loss_weights,
    make_schedule,
    to_x0_eps,
    training_target,
)
from maskdm_pipeline.masking import sample_masks
from maskdm_pipeline.models import build_uvit
from maskdm_pipeline.models.patching import keep_visible, patchify

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 1000
TIMES = torch.tensor([0, 10, 100, 300, 500, 900, T - 1])


def _closed_form(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """The weights as written in the issue: min(SNR, g)/SNR, min(SNR, g), min(SNR, g)/(SNR + 1)."""
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]


def _model():
    torch.manual_seed(0)
    return build_uvit("tiny", embed_dim=16, depth=2, num_heads=2)  # 16x16x1, p = 4, N = 16


def _batch(b: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, 1, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(b, 1, 16, 16, generator=g)
    t = torch.tensor([0, 5, 120, 400, 800, T - 1])[:b]
    return x0, t, noise


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_weights_match_the_closed_form(kind: str, prediction: str, gamma: float) -> None:
    s = make_schedule(kind, T)
    abar = s.alphas_cumprod[TIMES]
    snr = abar / (1 - abar)
    # Both sides of the clamp are among the times checked.
    assert (snr > gamma).any() and (snr < gamma).any()
    w = loss_weights(s, prediction, "min_snr", gamma)
    assert w.dtype == torch.float64 and w.shape == (T,)
    torch.testing.assert_close(w[TIMES], _closed_form(snr, prediction, gamma), rtol=1e-12, atol=0)
    assert torch.equal(loss_weights(s, prediction, "none", gamma), torch.ones(T, dtype=torch.float64))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_weighted_error_is_min_snr_times_the_x0_error(prediction: str) -> None:
    """The derivation, checked numerically through prediction.py's own conversions: for any network
    output, w(t) ||y - y_hat||^2 = min(SNR, gamma) ||x0 - x0_hat||^2 (Hang et al.'s x0-space loss)."""
    s, gamma = make_schedule("cosine", T), 5.0
    x0, t, noise = (v.double() if v.is_floating_point() else v for v in _batch())
    x_t = s.q_sample(x0, t, noise)
    target = training_target(prediction, s, x0, noise, t)
    out = target + 0.1 * torch.randn_like(target)  # an imperfect prediction
    x0_hat, _ = to_x0_eps(prediction, s, out, x_t, t)
    abar = s.alphas_cumprod[t]
    lhs = loss_weights(s, prediction, "min_snr", gamma)[t] * (out - target).pow(2).flatten(1).mean(1)
    rhs = (abar / (1 - abar)).clamp(max=gamma) * (x0_hat - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_weights_and_losses_stay_finite_at_both_ends(kind: str) -> None:
    s, model = make_schedule(kind, T), _model()
    x0, _, noise = _batch(b=2)
    t = torch.tensor([0, T - 1])
    mask = sample_masks("patch", 4, 2, ratio=0.5, generator=torch.Generator().manual_seed(0))
    for prediction in PREDICTIONS:
        w = loss_weights(s, prediction, "min_snr", 5.0)
        assert torch.isfinite(w).all() and (w > 0).all(), (prediction, w[[0, -1]])
        full = DenoisingLoss(s, prediction, weighting="min_snr")(model, x0, t=t, noise=noise)
        masked = MaskedDenoisingLoss(s, prediction, weighting="min_snr")(model, x0, mask, t=t, noise=noise)
        assert math.isfinite(full.item()) and math.isfinite(masked.item())


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_no_weighting_is_the_unweighted_loss_bitwise(prediction: str) -> None:
    s, model = make_schedule("linear", T), _model()
    x0, t, noise = _batch()
    with torch.no_grad():
        out = model(s.q_sample(x0, t, noise), t)
        target = training_target(prediction, s, x0, noise, t)
        # The reduction before weighting existed, op for op.
        expected = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1).mean()
        assert torch.equal(DenoisingLoss(s, prediction)(model, x0, t=t, noise=noise), expected)
        explicit = DenoisingLoss(s, prediction, weighting="none", min_snr_gamma=2.0)
        assert torch.equal(explicit(model, x0, t=t, noise=noise), expected)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_both_losses_weight_each_sample_by_its_t(prediction: str) -> None:
    s, model = make_schedule("cosine", T), _model()
    x0, t, noise = _batch()
    mask = sample_masks("patch", 4, 6, ratio=0.75, generator=torch.Generator().manual_seed(1))
    w = loss_weights(s, prediction, "min_snr", 5.0)[t].float()
    x_t = s.q_sample(x0, t, noise)
    target = training_target(prediction, s, x0, noise, t)
    with torch.no_grad():
        full_mse = (model(x_t, t) - target).pow(2).flatten(1).mean(1)  # (B,)
        visible = keep_visible(patchify(target, 4), mask)
        masked_mse = (model(x_t, t, mask) - visible).pow(2).flatten(1).mean(1)  # (B,)
        full = DenoisingLoss(s, prediction, weighting="min_snr")(model, x0, t=t, noise=noise)
        masked = MaskedDenoisingLoss(s, prediction, weighting="min_snr")(model, x0, mask, t=t, noise=noise)
        empty = torch.zeros(6, 16, dtype=torch.bool)
        masked_empty = MaskedDenoisingLoss(s, prediction, weighting="min_snr")(
            model, x0, empty, t=t, noise=noise
        )
    torch.testing.assert_close(full, (w * full_mse).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(masked, (w * masked_mse).mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(masked_empty, full, rtol=1e-6, atol=0)  # ratio 0 is the DSM loss
    assert not torch.allclose(full, full_mse.mean())  # the weighting does something


def test_weighted_loss_splits_over_ranks() -> None:
    """Per-sample weights before the batch mean: equal rank slices still average to the whole."""
    s, model = make_schedule("linear", T), _model()
    x0, t, noise = _batch()
    loss = DenoisingLoss(s, "v", weighting="min_snr")
    with torch.no_grad():
        whole = loss(model, x0, t=t, noise=noise)
        halves = (loss(model, x0[:3], t=t[:3], noise=noise[:3]) + loss(model, x0[3:], t=t[3:], noise=noise[3:])) / 2
    torch.testing.assert_close(halves, whole, rtol=1e-6, atol=0)


@pytest.mark.parametrize("loss_cls", [DenoisingLoss, MaskedDenoisingLoss])
def test_bad_weighting_is_refused_naming_the_parameter(loss_cls) -> None:
    s = make_schedule("linear", T)
    assert LOSS_WEIGHTINGS == ("none", "min_snr")
    for gamma in (0, -1.0, float("nan"), float("inf"), True, "5"):
        for weighting in LOSS_WEIGHTINGS:
            with pytest.raises(ValueError, match=r"diffusion\.min_snr_gamma"):
                loss_cls(s, "eps", weighting=weighting, min_snr_gamma=gamma)
    with pytest.raises(ValueError, match=r"diffusion\.loss_weighting.*none, min_snr.*'p2'"):
        loss_cls(s, "eps", weighting="p2")
    with pytest.raises(ValueError, match=r"diffusion\.min_snr_gamma"):
        loss_weights(s, "eps", "min_snr", 0.0)
