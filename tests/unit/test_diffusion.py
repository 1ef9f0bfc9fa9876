"""Schedules, prediction targets and the DSM / MDSM losses (METHOD.md sections 1 and 4).

The stand-in models follow the U-ViT contract (architecture.md): forward(x_t, t, mask=None)
returns an image, or with a bool mask (B, N) the visible tokens (B, N_vis, p*p*C).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from maskdm_pipeline.diffusion import (
    PREDICTIONS,
    DenoisingLoss,
    MaskedDenoisingLoss,
    make_schedule,
    to_x0_eps,
    training_target,
)
from maskdm_pipeline.models.patching import keep_visible, patchify

T = 1000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConvStandIn(nn.Module):
    """A small conv net with the model contract; kernel_size=1 makes every pixel independent,
    so nothing of a masked patch can leak into a visible one (as in the real token-dropping model)."""

    def __init__(
        self, channels: int = 1, patch_size: int = 2, hidden: int = 16, kernel_size: int = 3
    ):
        super().__init__()
        self.patch_size, self.in_chans = patch_size, channels
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv2d(channels + 1, hidden, kernel_size, padding=pad),
            nn.SiLU(),
            nn.Conv2d(hidden, channels, kernel_size, padding=pad),
        )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        time = (t.float() / T).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
        out = self.net(torch.cat([x, time], dim=1))
        return out if mask is None else keep_visible(patchify(out, self.patch_size), mask)


class MLPStandIn(nn.Module):
    """A tiny MLP on the flattened image, for the overfitting test."""

    def __init__(self, channels: int = 1, size: int = 8, patch_size: int = 2, hidden: int = 128):
        super().__init__()
        self.patch_size, self.in_chans, self.size = patch_size, channels, size
        d = channels * size * size
        self.net = nn.Sequential(nn.Linear(d + 1, hidden), nn.SiLU(), nn.Linear(hidden, d))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = torch.cat([x.flatten(1), (t.float() / T)[:, None]], dim=1)
        out = self.net(h).view_as(x)
        return out if mask is None else keep_visible(patchify(out, self.patch_size), mask)


def fixed_mask(batch: int, n: int, n_masked: int, seed: int = 0) -> torch.Tensor:
    """(B, N) bool with exactly n_masked True per row, rows independent."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(batch)])
    return order < n_masked


def batch(b: int = 8, c: int = 1, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, c, size, size, generator=g) * 2 - 1
    t = torch.randint(0, T, (b,), generator=g)
    noise = torch.randn(b, c, size, size, generator=g)
    return x0, t, noise


# ---------------------------------------------------------------- schedules


def test_linear_schedule_endpoints_and_known_value():
    s = make_schedule("linear")
    assert s.betas.dtype == torch.float64 and s.alphas_cumprod.dtype == torch.float64
    assert s.num_timesteps == T
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    # abar_{T-1} of Ho et al.'s schedule, an often-quoted number.
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-12)


def test_cosine_schedule_matches_closed_form_and_is_clipped():
    s = make_schedule("cosine")
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    closed = f[1:] / f[0]  # abar_t = f(t+1)/f(0) wherever no beta was clipped
    np.testing.assert_allclose(s.alphas_cumprod.numpy()[:-1], closed[:-1], rtol=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)
    assert s.betas[-1].item() == pytest.approx(0.999)  # f(T) = 0 would give beta = 1
    assert s.betas[0].item() == pytest.approx(4.1284e-5, rel=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_are_monotone(kind):
    s = make_schedule(kind)
    assert (s.betas > 0).all() and (s.betas < 1).all()
    assert (s.alphas_cumprod.diff() < 0).all()
    assert (s.log_snr.diff() < 0).all()


def test_linear_schedule_keeps_its_noise_level_for_small_T():
    # Betas are scaled by 1000/T so a short test schedule still ends in (almost) pure noise.
    assert make_schedule("linear", T=100).alphas_cumprod[-1].item() < 1e-4


def test_unknown_schedule_names_the_parameter():
    with pytest.raises(ValueError, match=r"diffusion\.schedule.*linear, cosine"):
        make_schedule("quadratic")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_q_sample_formula_and_dtype(dtype):
    s = make_schedule("cosine")
    x0, t, noise = batch()
    x0, noise = x0.to(dtype), noise.to(dtype)
    x_t = s.q_sample(x0, t, noise)
    assert x_t.dtype == dtype
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(x_t.double(), expected, atol=tol, rtol=tol)


# ---------------------------------------------------------------- predictions


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_round_trip(kind, prediction):
    s = make_schedule(kind)
    x0, _, noise = batch(b=16)
    t = torch.linspace(0, T - 2, 16).long()  # T-1 of the cosine schedule has abar ~ 2e-9
    x_t = s.q_sample(x0, t, noise)
    target = training_target(prediction, s, x0, noise, t)
    x0_hat, eps_hat = to_x0_eps(prediction, s, target, x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=2e-3, rtol=0)


def test_v_target_is_the_rotation():
    s = make_schedule("linear")
    x0, t, noise = batch()
    a = s.alphas_cumprod[t].sqrt().float().view(-1, 1, 1, 1)
    sig = (1 - s.alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1)
    torch.testing.assert_close(training_target("v", s, x0, noise, t), a * noise - sig * x0)
    torch.testing.assert_close(training_target("eps", s, x0, noise, t), noise)
    torch.testing.assert_close(training_target("x0", s, x0, noise, t), x0)


def test_unknown_prediction_names_the_parameter():
    s = make_schedule("linear")
    with pytest.raises(ValueError, match=r"diffusion\.prediction"):
        DenoisingLoss(s, "score")
    x0, t, noise = batch()
    with pytest.raises(ValueError, match=r"diffusion\.prediction"):
        to_x0_eps("score", s, x0, x0, t)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_masked_loss_with_empty_mask_equals_full_loss(prediction):
    torch.manual_seed(0)
    s, model = make_schedule("linear"), ConvStandIn()
    x0, t, noise = batch()
    empty = torch.zeros(8, 16, dtype=torch.bool)
    full = DenoisingLoss(s, prediction)(model, x0, t=t, noise=noise)
    masked = MaskedDenoisingLoss(s, prediction)(model, x0, empty, t=t, noise=noise)
    torch.testing.assert_close(masked, full, rtol=1e-6, atol=0)
    # Also when (t, eps) are drawn from the same generator seed.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    full = DenoisingLoss(s, prediction)(model, x0, generator=g1)
    masked = MaskedDenoisingLoss(s, prediction)(model, x0, empty, generator=g2)
    torch.testing.assert_close(masked, full, rtol=1e-6, atol=0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_masked_loss_ignores_masked_patches(prediction):
    torch.manual_seed(0)
    s, model = make_schedule("linear"), ConvStandIn(kernel_size=1)
    x0, t, noise = batch()
    mask = fixed_mask(8, 16, 12)
    loss = MaskedDenoisingLoss(s, prediction)
    reference = loss(model, x0, mask, t=t, noise=noise)
    # Rewrite image and noise inside the masked patches only: the loss must not move.
    pixel_mask = mask.view(8, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)
    x0_b = torch.where(pixel_mask, torch.rand_like(x0) * 2 - 1, x0)
    noise_b = torch.where(pixel_mask, 5 * torch.randn_like(noise), noise)
    torch.testing.assert_close(
        loss(model, x0_b, mask, t=t, noise=noise_b), reference, rtol=0, atol=0
    )
    # The same edit on visible pixels must change it (the test can fail).
    x0_c = torch.where(~pixel_mask, torch.rand_like(x0) * 2 - 1, x0)
    assert not torch.allclose(loss(model, x0_c, mask, t=t, noise=noise), reference)


def test_masked_loss_gradient_is_zero_on_masked_patches():
    class Canvas(nn.Module):
        """Outputs a learnable image: d loss / d canvas shows which pixels the loss sees."""

        patch_size, in_chans = 2, 1

        def __init__(self):
            super().__init__()
            self.canvas = nn.Parameter(torch.randn(8, 1, 8, 8))

        def forward(self, x, t, mask=None):
            out = self.canvas + 0 * x
            return out if mask is None else keep_visible(patchify(out, 2), mask)

    model, mask = Canvas(), fixed_mask(8, 16, 12)
    x0, t, noise = batch()
    MaskedDenoisingLoss(make_schedule("linear"), "eps")(
        model, x0, mask, t=t, noise=noise
    ).backward()
    grad_per_patch = patchify(model.canvas.grad, 2).abs().sum(-1)  # (B, N)
    assert (grad_per_patch[mask] == 0).all()
    assert (grad_per_patch[~mask] > 0).all()
    # MSE averaged over visible elements per sample, then over the batch.
    n_elem = 8 * 4 * 4
    torch.testing.assert_close(
        model.canvas.grad,
        2
        * (model.canvas - noise).detach()
        / n_elem
        * (~mask.view(8, 1, 4, 4).repeat_interleave(2, 2).repeat_interleave(2, 3)),
    )


@pytest.mark.parametrize("masked", [False, True])
def test_loss_is_deterministic_and_splits_over_ranks(masked):
    torch.manual_seed(0)
    s, model = make_schedule("cosine"), ConvStandIn()
    x0, t, noise = batch(b=8)
    mask = fixed_mask(8, 16, 8)
    loss = MaskedDenoisingLoss(s, "v") if masked else DenoisingLoss(s, "v")

    def run(sl: slice, **kwargs) -> torch.Tensor:
        return loss(model, x0[sl], *([mask[sl]] if masked else []), **kwargs)

    whole = run(slice(None), t=t, noise=noise)
    assert torch.equal(whole, run(slice(None), t=t, noise=noise))
    halves = (run(slice(0, 4), t=t[:4], noise=noise[:4]) + run(slice(4, 8), t=t[4:], noise=noise[4:])) / 2
    torch.testing.assert_close(halves, whole, rtol=1e-6, atol=0)  # what DDP's gradient averaging sees
    # Drawn from a generator: the same seed gives the same loss, another seed another one.
    a = run(slice(None), generator=torch.Generator().manual_seed(1))
    b = run(slice(None), generator=torch.Generator().manual_seed(1))
    c = run(slice(None), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("masked", [False, True])
def test_tiny_model_overfits_a_fixed_batch(masked):
    torch.manual_seed(0)
    s, model = make_schedule("linear"), MLPStandIn()
    x0, t, noise = batch(b=4)
    mask_arg = [fixed_mask(4, 16, 8)] if masked else []
    loss_fn = MaskedDenoisingLoss(s, "eps") if masked else DenoisingLoss(s, "eps")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = loss_fn(model, x0, *mask_arg, t=t, noise=noise).item()
    for _ in range(300):  # stops early: near-zero losses make Adam crawl through denormals
        loss = loss_fn(model, x0, *mask_arg, t=t, noise=noise)
        if loss.item() < first / 100:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.isfinite(loss.item())
    assert loss.item() < first / 100, (first, loss.item())


def test_loss_argument_errors():
    s, model = make_schedule("linear"), ConvStandIn()
    x0, t, noise = batch()
    with pytest.raises(ValueError, match="needs a mask"):
        MaskedDenoisingLoss(s, "eps")(model, x0)
    with pytest.raises(ValueError, match="mask must be bool"):
        MaskedDenoisingLoss(s, "eps")(model, x0, torch.zeros(8, 15, dtype=torch.bool))
    with pytest.raises(TypeError):  # the whole-image loss has no mask argument to ignore one
        DenoisingLoss(s, "eps")(model, x0, fixed_mask(8, 16, 4))
    with pytest.raises(ValueError, match="t must have shape"):
        DenoisingLoss(s, "eps")(model, x0, t=t[:4], noise=noise)
    with pytest.raises(ValueError, match="noise must have"):
        DenoisingLoss(s, "eps")(model, x0, t=t, noise=noise[:4])
