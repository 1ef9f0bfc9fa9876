"""The exponential moving average of the weights: ``ema_pytorch.EMA``, the library the official
code used, with its defaults (METHOD.md section 4), plus the state-dict shape of the checkpoint.

What the library does, and tests/unit/test_ema.py checks (ema_pytorch 0.8.3):

- :func:`ema_pytorch.EMA.update` counts its calls in ``step``; the first call, and every call
  whose pre-call ``step`` is <= ``update_after_step``, copies the weights (the warm-up);
- after that, ema <- lerp(ema, model, 1 - decay) with
  decay = clamp(1 - (1 + k / inv_gamma)^(-power), min_value, beta), k = step - update_after_step - 1
  (``step`` counted after the call, so the first averaging call has k = 1 and decay
  1 - 2^(-2/3) ~ 0.37; with power 2/3 the decay reaches 0.999 only after ~31.6k updates).
  The library computes the decay in float32;
- floating-point buffers are averaged like the parameters (U-ViT has none).

The checkpoint keeps ``{"model": EMA weights, "step": int}`` (fileio.py's format table), the shape
generation.py and fine-tuning read, rather than the library's own state dict (its ``ema_model.``
prefix and tensor-valued ``step``/``initted``), so checkpoints written before the library was
used still resume.
"""

from __future__ import annotations

from typing import Any

from ema_pytorch import EMA
from torch import nn

from maskdm_pipeline.training.config import StageConfig

__all__ = ["EMA", "build_ema", "ema_state_dict", "load_ema_state_dict"]


def build_ema(model: nn.Module, stage: StageConfig) -> EMA:
    """The EMA of the plain ``model`` (not its DDP / compile wrapper), updated every step;
    ``.ema_model`` (eval mode, no gradients) is what is evaluated and sampled."""
    ema = EMA(model, beta=stage.ema_decay, update_after_step=stage.ema_update_after_step,
              update_every=1, include_online_model=False, use_foreach=True)
    ema.ema_model.eval()
    return ema


def ema_state_dict(ema: EMA) -> dict[str, Any]:
    """``{"model": tensors, "step": int}``: loadable with ``torch.load(weights_only=True)``."""
    return {"model": ema.ema_model.state_dict(), "step": int(ema.step)}


def load_ema_state_dict(ema: EMA, state: dict[str, Any]) -> None:
    """Restore the averaged weights and the update counter (the warm-up resumes where it was)."""
    ema.ema_model.load_state_dict(state["model"])
    ema.step.fill_(int(state["step"]))
    ema.initted.fill_(int(state["step"]) > 0)
