"""Exponential moving average of the weights, with ema_pytorch's warm-up (METHOD.md section 4).

The official code used ``ema_pytorch.EMA(model, beta, update_every=1)`` with the library's
defaults; this class reproduces that behaviour (written from its documented rules, not imported):

- ``step`` counts calls to :meth:`EMA.update`; a call does work only when (step before the call)
  is a multiple of ``update_every``;
- while that pre-call step is <= ``update_after_step`` the weights are copied (warm-up);
- afterwards ema <- decay * ema + (1 - decay) * model with

      decay = clamp(1 - (1 + k / inv_gamma)^(-power), min_value, beta),  k = step - update_after_step - 1

  (step counted after the call, so the first averaging call has k = 1 and decay = 1 - 2^(-2/3)
  ~ 0.37); with power = 2/3 the decay only reaches 0.999 after ~31.6k updates;
- buffers (e.g. norm statistics) are copied, never averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def ema_decay(
    step: int,
    *,
    beta: float = 0.999,
    update_after_step: int = 100,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
    min_value: float = 0.0,
) -> float:
    """The decay ema_pytorch uses at ``step`` (update calls so far, this one included).

    0.0 during the warm-up (the weights are copied), then
    clamp(1 - (1 + k/inv_gamma)^(-power), min_value, beta) with k = step - update_after_step - 1.
    """
    k = step - update_after_step - 1
    if k <= 0:
        return 0.0
    value = 1.0 - (1.0 + k / inv_gamma) ** (-power)
    return min(max(value, min_value), beta)


class EMA:
    """An EMA copy of ``model``, kept in ``.model`` (eval mode, no gradients).

    Args:
        model: the live model, plain or wrapped by DDP / torch.compile (the copy is of the plain one).
        beta: the maximum decay (``ema_decay`` in the configs: 0.999, or 0.9999 for LSUN).
        update_after_step: warm-up calls during which the weights are copied.
        update_every: average only every this many calls (10 in the v1 DWT configs).
        inv_gamma, power, min_value: the warm-up curve, ema_pytorch's defaults.
    """

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.999,
        update_after_step: int = 100,
        update_every: int = 1,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        min_value: float = 0.0,
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"EMA beta must lie in [0, 1); got {beta}")
        if update_every < 1 or update_after_step < 0:
            raise ValueError("EMA update_every must be >= 1 and update_after_step >= 0")
        self.beta = beta
        self.update_after_step = update_after_step
        self.update_every = update_every
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_value = min_value
        self.step = 0
        self.model = copy.deepcopy(unwrap_model(model)).eval()
        self.model.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the last :meth:`update` used (0.0 while copying)."""
        return ema_decay(
            self.step,
            beta=self.beta,
            update_after_step=self.update_after_step,
            inv_gamma=self.inv_gamma,
            power=self.power,
            min_value=self.min_value,
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the live ``model``'s current weights into the average (call once per optimiser step)."""
        step_before = self.step
        self.step += 1
        if step_before % self.update_every != 0:
            return
        source = unwrap_model(model)
        if step_before <= self.update_after_step:
            self._copy_from(source)
            return
        decay = self.current_decay()
        ema_params, live_params = [], []
        for (name, ema_p), (live_name, live_p) in zip(
            self.model.named_parameters(), source.named_parameters(), strict=True
        ):
            if name != live_name:
                raise ValueError(f"EMA and model parameters differ: {name} vs {live_name}")
            if ema_p.is_floating_point():
                ema_params.append(ema_p)
                live_params.append(live_p.detach().to(ema_p.device, ema_p.dtype))
            else:
                ema_p.copy_(live_p)
        if ema_params:
            # lerp(ema, live, 1 - decay) = decay * ema + (1 - decay) * live; one fused kernel per group.
            torch._foreach_lerp_(ema_params, live_params, 1.0 - decay)
        self._copy_buffers_from(source)

    def _copy_from(self, source: nn.Module) -> None:
        for ema_p, live_p in zip(self.model.parameters(), source.parameters(), strict=True):
            ema_p.copy_(live_p.detach())
        self._copy_buffers_from(source)

    def _copy_buffers_from(self, source: nn.Module) -> None:
        for ema_b, live_b in zip(self.model.buffers(), source.buffers(), strict=True):
            ema_b.copy_(live_b)

    def to(self, device: torch.device | str) -> EMA:
        """Move the averaged copy (e.g. keep it on the training device)."""
        self.model.to(device)
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the averaged model."""
        return self.model(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """``{"model": tensors, "step": int}``: loadable with ``torch.load(weights_only=True)``."""
        return {"model": self.model.state_dict(), "step": int(self.step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averaged weights and the update counter (the warm-up resumes where it was)."""
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
