"""EMA with ema_pytorch's warm-up (METHOD.md section 4)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from maskdm_pipeline.training.ema import EMA, ema_decay


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)  # has float buffers and an int64 num_batches_tracked


def fill(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def expected_decay(call: int, after: int = 100, beta: float = 0.999) -> float:
    """The n-th update call (1-based) copies while n - 1 <= after, then averages with k = n - after - 1."""
    if call - 1 <= after:
        return 0.0
    return min(beta, 1 - (1 + (call - after - 1)) ** (-2 / 3))


def test_warm_up_copies_the_weights():
    model = Net()
    ema = EMA(model, beta=0.999, update_after_step=100)
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    for call in range(1, 102):  # calls 1..101 (pre-call step 0..100) copy
        fill(model, float(call))
        ema.update(model)
        assert ema.step == call
        assert all(torch.all(p == call) for p in ema.model.parameters())
    fill(model, 0.0)
    ema.update(model)  # call 102: the first average, k = 1
    d = expected_decay(102)
    assert d == pytest.approx(1 - 2 ** (-2 / 3)) and ema.current_decay() == pytest.approx(d)
    for p in ema.model.parameters():
        torch.testing.assert_close(p, torch.full_like(p, d * 101.0))


def test_decay_after_k_steps_follows_the_warm_up_curve():
    model = Net()
    ema = EMA(model, beta=0.999, update_after_step=10)
    fill(model, 1.0)
    for _ in range(11):
        ema.update(model)
    value = 1.0
    for call in range(12, 60):
        fill(model, float(call % 7))
        ema.update(model)
        d = expected_decay(call, after=10)
        value = d * value + (1 - d) * (call % 7)
        assert ema.current_decay() == pytest.approx(d)
        torch.testing.assert_close(ema.model.lin.weight, torch.full((2, 3), value))
    # The cap: 1 - (1 + k)^(-2/3) reaches beta = 0.999 only after ~31.6k updates.
    assert ema_decay(31_000 + 101) < 0.999
    assert ema_decay(32_000 + 101) == 0.999
    assert ema_decay(100) == 0.0 and ema_decay(101) == 0.0


def test_buffers_are_copied_not_averaged():
    model = Net()
    ema = EMA(model, update_after_step=0)
    ema.update(model)
    model.norm.running_mean.fill_(5.0)
    model.norm.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.all(ema.model.norm.running_mean == 5.0)
    assert int(ema.model.norm.num_batches_tracked) == 7


def test_update_every_skips_calls():
    model = Net()
    ema = EMA(model, update_after_step=0, update_every=3)
    fill(model, 1.0)
    ema.update(model)  # pre-call step 0: copies
    fill(model, 2.0)
    ema.update(model)  # steps 1 and 2 are skipped
    ema.update(model)
    assert torch.all(ema.model.lin.weight == 1.0) and ema.step == 3
    ema.update(model)  # pre-call step 3 averages with k = 3
    d = expected_decay(4, after=0)
    torch.testing.assert_close(ema.model.lin.weight, torch.full((2, 3), d * 1.0 + (1 - d) * 2.0))


def test_state_round_trip_with_weights_only_load():
    model = Net()
    ema = EMA(model, update_after_step=2)
    for call in range(6):
        fill(model, float(call))
        ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = EMA(Net(), update_after_step=2)
    restored.load_state_dict(state)
    assert restored.step == ema.step == 6 and isinstance(state["step"], int)
    for a, b in zip(
        ema.model.state_dict().values(), restored.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    # Both continue identically (the warm-up position travelled with the state).
    fill(model, 9.0)
    ema.update(model)
    restored.update(model)
    assert torch.equal(ema.model.lin.weight, restored.model.lin.weight)


def test_wrapped_models_are_unwrapped():
    model = Net()
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        ema = EMA(wrapped, update_after_step=0)
        assert type(ema.model) is Net
        fill(model, 3.0)
        ema.update(wrapped)
        assert torch.all(ema.model.lin.weight == 3.0)
        assert ema.model.lin.weight.data_ptr() != model.lin.weight.data_ptr()
