"""The project's own outputs (JSON, CSV, Markdown and PNG files) are replaced all at once: a save
that fails half-way (a crash, a full disk, data that cannot be written) leaves the last complete
file, never half of one and never a stray temporary (issue 16 item 5).

The catalog entries are the project's (conf/smoke), pointed at a temporary folder. kedro-datasets'
own classes open the target for writing (truncating it) before they write; the catalog names the
project's subclasses of them (``datasets/files.py``), which write through ``atomic.atomic_write``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest
from kedro.io import DataCatalog, DatasetError
from kedro_project import PROJECT_ROOT
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# One entry per kind of file the project writes. A figure is drawn into memory before its file is
# opened, so a failed drawing never touched the file, with or without issue 14.
ENTRIES = ("metrics", "dataset_card", "maskdm_sampling_info", "pretrain_history", "report_markdown",
           "maskdm_sample_grid")


def _catalog_config() -> dict[str, Any]:
    from kedro.config import OmegaConfigLoader

    from maskdm_pipeline import settings

    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env="smoke",
                               **{**settings.CONFIG_LOADER_ARGS, "default_run_env": "smoke"})
    return dict(loader["catalog"])


class _Unprintable:
    def __str__(self) -> str:
        raise OSError(28, "No space left on device")


class _HalfImage:
    """Writes the first bytes of a PNG, then fails, as a full disk does."""

    def save(self, handle: Any, *args: Any, **kwargs: Any) -> None:
        handle.write(b"\x89PNG\r\n\x1a\n")
        raise OSError(28, "No space left on device")

    savefig = save


def _good_and_half(kind: str) -> tuple[Any, Any]:
    if kind == "JSONDataset":
        return {"fd_clf": 1.5}, {"fd_clf": 2.5, "note": _Unprintable()}
    if kind == "CSVDataset":
        good = pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.4]})
        return good, pd.DataFrame({"step": [1, 2], "loss": [0.3, _Unprintable()]})
    if kind == "TextDataset":
        return "# Report\n\nfd_clf 1.5\n", 123  # not text: fails after the file was opened
    if kind == "ImageDataset":
        return Image.new("L", (8, 8), 200), _HalfImage()
    if kind == "MatplotlibDataset":
        return plt.figure(figsize=(1, 1)), _HalfImage()
    raise AssertionError(f"no test data for {kind}")


@pytest.mark.parametrize("name", [*ENTRIES, "report_curves"])
def test_a_save_that_fails_half_way_keeps_the_last_complete_file(name: str, tmp_path: Path) -> None:
    config = {key: dict(value) for key, value in _catalog_config().items()}
    for value in config.values():
        for key in ("filepath", "path"):
            if isinstance(value.get(key), str):
                value[key] = str(tmp_path / value[key])
    catalog = DataCatalog.from_config(config)
    dataset = catalog.get(name)
    kind = next(c.__name__ for c in type(dataset).__mro__
                if c.__name__ in ("JSONDataset", "CSVDataset", "TextDataset", "ImageDataset", "MatplotlibDataset"))
    good, half = _good_and_half(kind)
    catalog.save(name, good)
    path = Path(str(dataset._filepath))
    before = path.read_bytes()
    with pytest.raises(DatasetError):
        catalog.save(name, half)
    assert path.read_bytes() == before, f"{name}: the last complete file was replaced by part of a new one"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "a temporary was left behind"
