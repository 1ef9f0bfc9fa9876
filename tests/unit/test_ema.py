"""The EMA (training/ema.py): ema_pytorch's warm-up and decay curve as METHOD.md section 4 states
them, and a state that loads with weights_only and resumes exactly."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from maskdm_pipeline.training.config import StageConfig
from maskdm_pipeline.training.ema import build_ema, ema_state_dict, load_ema_state_dict


def stage(after: int, beta: float = 0.999) -> StageConfig:
    return StageConfig(steps=1, batch_size=1, lr=1.0, ema_decay=beta, ema_update_after_step=after)


def fill(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def expected_decay(call: int, after: int = 100, beta: float = 0.999) -> float:
    """The n-th update call (1-based) copies while n - 1 <= after, then averages with
    k = n - after - 1: min(beta, 1 - (1 + k)^(-2/3)) (METHOD.md section 4)."""
    if call - 1 <= after:
        return 0.0
    return min(beta, 1 - (1 + (call - after - 1)) ** (-2 / 3))


def test_warm_up_copies_the_weights_then_averages():
    model = nn.Linear(3, 2)
    ema = build_ema(model, stage(after=100))
    assert not any(p.requires_grad for p in ema.ema_model.parameters()) and not ema.ema_model.training
    for call in range(1, 102):  # calls 1..101 (pre-call step 0..100) copy
        fill(model, float(call))
        ema.update()
        assert int(ema.step) == call
        assert all(torch.all(p == call) for p in ema.ema_model.parameters())
    fill(model, 0.0)
    ema.update()  # call 102: the first average, k = 1
    d = expected_decay(102)
    assert d == pytest.approx(1 - 2 ** (-2 / 3)) and ema.get_current_decay() == pytest.approx(d)
    for p in ema.ema_model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, d * 101.0))


def test_decay_after_k_steps_follows_the_warm_up_curve():
    model = nn.Linear(3, 2)
    ema = build_ema(model, stage(after=10))
    fill(model, 1.0)
    for _ in range(11):
        ema.update()
    value = 1.0
    for call in range(12, 60):
        fill(model, float(call % 7))
        ema.update()
        d = expected_decay(call, after=10)
        value = d * value + (1 - d) * (call % 7)
        assert ema.get_current_decay() == pytest.approx(d, rel=1e-6)  # the library's float32
        torch.testing.assert_close(ema.ema_model.weight, torch.full((2, 3), value))
    # The cap: 1 - (1 + k)^(-2/3) reaches beta = 0.999 only after ~31.6k updates.
    ema.step.fill_(31_000 + 101)
    assert ema.get_current_decay() < 0.999
    ema.step.fill_(32_000 + 101)
    assert ema.get_current_decay() == pytest.approx(0.999)


def test_state_round_trip_with_weights_only_load_resumes_exactly():
    model = nn.Linear(3, 2)
    ema = build_ema(model, stage(after=2))
    for call in range(6):
        fill(model, float(call))
        ema.update()
    buffer = io.BytesIO()
    torch.save(ema_state_dict(ema), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["step"] == 6 and isinstance(state["step"], int)
    restored = build_ema(nn.Linear(3, 2), stage(after=2))
    load_ema_state_dict(restored, state)
    for a, b in zip(ema.ema_model.state_dict().values(), restored.ema_model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # Both continue identically (the warm-up position travelled with the state).
    fill(model, 9.0)
    ema.update()
    restored.online_model[0] = model  # the restored EMA follows the same live model
    restored.update()
    assert torch.equal(ema.ema_model.weight, restored.ema_model.weight)


def test_a_fresh_state_still_starts_by_copying():
    """Loading a step-0 state (a run interrupted before its first update) keeps the first copy."""
    model = nn.Linear(3, 2)
    ema = build_ema(model, stage(after=0))
    load_ema_state_dict(ema, ema_state_dict(build_ema(nn.Linear(3, 2), stage(after=0))))
    fill(model, 4.0)
    ema.update()
    assert torch.all(ema.ema_model.weight == 4.0)
