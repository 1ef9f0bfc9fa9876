"""Every persistent output is written atomically: the kedro-datasets subclasses of the catalog and
the PNG folder of the samples (replaced whole, never topped up)."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from kedro.io import DatasetError  # noqa: E402
from PIL import Image  # noqa: E402

from maskdm_pipeline.datasets import (  # noqa: E402
    CSVDataset,
    ImageDataset,
    JSONDataset,
    MatplotlibDataset,
    PngFolderDataset,
    TextDataset,
)


def _figure() -> plt.Figure:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return fig


@pytest.mark.parametrize(("cls", "name", "data"), [
    (JSONDataset, "a.json", {"x": 1}),
    (CSVDataset, "a.csv", pd.DataFrame({"step": [1, 2]})),
    (TextDataset, "a.md", "# report\n"),
    (ImageDataset, "a.png", Image.new("L", (4, 4), 7)),
    (MatplotlibDataset, "a.png", None),
])
def test_each_file_dataset_saves_through_a_scratch_file_and_keeps_its_preview(tmp_path: Path, cls, name, data) -> None:
    dataset = cls(filepath=str(tmp_path / name))
    dataset.save(_figure() if data is None else data)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no scratch left beside it
    assert dataset.filepath == tmp_path / name and dataset.exists()
    parent = cls.__bases__[-1]  # the kedro-datasets class: kedro-viz calls its preview
    assert parent.__module__.startswith("kedro_datasets.")
    if cls is ImageDataset:  # pillow.ImageDataset has no preview: ours shows the image (datasets/previews.py)
        assert dataset.preview() == base64.b64encode((tmp_path / name).read_bytes()).decode()
    else:  # kedro-datasets' own preview (or its lack of one) is kept
        assert getattr(cls, "preview", None) is getattr(parent, "preview", None)
    if cls is JSONDataset:
        assert dataset.load() == data


def test_a_save_that_fails_midway_leaves_the_previous_file(tmp_path: Path) -> None:
    dataset = JSONDataset(filepath=str(tmp_path / "metrics.json"))
    dataset.save({"fd_clf": 1.5})
    with pytest.raises(DatasetError):
        dataset.save({"fd_clf": 2.0, "bad": object()})  # json.dump fails after writing part of it
    assert dataset.load() == {"fd_clf": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_png_folder_is_replaced_whole(tmp_path: Path) -> None:
    folder = PngFolderDataset(path=str(tmp_path / "maskdm_png"))
    images = {f"{i:06d}": Image.fromarray(np.full((4, 4), i, np.uint8)) for i in range(5)}
    folder.save(images)
    folder.save({k: images[k] for k in ("000000", "000001")})
    assert sorted(p.name for p in (tmp_path / "maskdm_png").iterdir()) == ["000000.png", "000001.png"]
    loaded = folder.load()
    assert sorted(loaded) == ["000000", "000001"] and np.asarray(loaded["000001"]()).max() == 1
    with pytest.raises(DatasetError, match="would leave the folder"):
        folder.save({"../escape": images["000000"]})
    assert sorted(folder.load()) == ["000000", "000001"]
