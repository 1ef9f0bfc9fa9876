"""A STAND-IN for pytorch-fid's FID Inception weights, for tests and benchmarks only.

Offline tests and benchmarks exercise the real loading path and the real architecture (same keys
and shapes as ``pt_inception-2015-12-05``) without the real file. Numbers computed with it are not
FID and must never be reported as FID; benchmarks use it only for timings and agreement checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import torch

from maskdm_pipeline.metrics import hub_weights_path

STANDIN_NOTE = "stand-in random weights (timing only; values are not FID)"


def random_fid_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised state dict for pytorch-fid's FID Inception, reproducible by ``seed``.

    pytorch-fid's own ``fid_inception_v3`` builds the network (its loader is pointed at the
    network's own initial state), then every conv weight is redrawn He-normal so activations
    neither vanish nor explode through the ~95 layers (PyTorch's default init shrinks them to
    about 1e-8 at pool3, which would make any comparison meaningless). The caller's global RNG
    is left as it was.
    """
    import pytorch_fid.inception as pfi

    captured: dict[str, torch.nn.Module] = {}
    build = pfi._inception_v3

    def capture(*args: Any, **kwargs: Any) -> torch.nn.Module:
        # fid_inception_v3 builds torchvision's net with this, swaps in the FID blocks, then loads.
        captured["net"] = build(*args, **kwargs)
        return captured["net"]

    with (torch.random.fork_rng(devices=[]),
          mock.patch.object(pfi, "_inception_v3", capture),
          mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: captured["net"].state_dict())):
        torch.manual_seed(seed)
        net = pfi.fid_inception_v3()
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for key, value in state.items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


def benchmark_weights(weights: Path | None, folder: Path) -> tuple[Path, str]:
    """(weights file, what it is): ``weights`` if given, else the hub-cache copy of the real file,
    else a stand-in written into ``folder``."""
    path = weights or hub_weights_path()
    if weights is None and not path.is_file():
        path = folder / "standin_inception.pth"
        torch.save(random_fid_inception_state_dict(seed=0), path)
        return path, STANDIN_NOTE
    return path, str(path)
