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


def _images(value: int) -> dict[str, np.ndarray]:
    return {"images": np.full((3, 1, 4, 4), value, np.uint8), "labels": np.arange(3)}


@pytest.mark.parametrize("kind", ["file in a linked folder", "linked file", "linked output folder (PNGs)",
                                  "linked output folder (shards)"])
def test_a_linked_data_folder_or_file_stays_a_link_across_saves(tmp_path: Path, kind: str) -> None:
    """A user's arrangement of the data folders (here: on "another disk", ``elsewhere/``) survives
    every rewrite: the link stays a link to the same place and its target gets the new content,
    with no scratch left beside the link or the target."""
    project, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    if kind == "file in a linked folder":
        (project / "06_models").symlink_to(elsewhere, target_is_directory=True)
        link, dataset = project / "06_models", JSONDataset(filepath=str(project / "06_models" / "m.json"))
        save, read = (lambda v: dataset.save({"v": v})), (lambda: dataset.load()["v"])
    elif kind == "linked file":
        (elsewhere / "m.json").write_text("{}")
        link = project / "m.json"
        link.symlink_to(elsewhere / "m.json")
        dataset = JSONDataset(filepath=str(link))
        save, read = (lambda v: dataset.save({"v": v})), (lambda: dataset.load()["v"])
    elif kind == "linked output folder (PNGs)":
        (elsewhere / "pngs").mkdir()
        link = project / "maskdm_png"
        link.symlink_to(elsewhere / "pngs", target_is_directory=True)
        dataset = PngFolderDataset(path=str(link))
        save = lambda v: dataset.save({f"{i:06d}": Image.new("L", (2, 2), v) for i in range(v)})  # noqa: E731
        read = lambda: len(dataset.load())  # noqa: E731
    else:
        from maskdm_pipeline.datasets import ShardDataset

        (elsewhere / "train").mkdir()
        link = project / "train"
        link.symlink_to(elsewhere / "train", target_is_directory=True)
        dataset = ShardDataset(str(link))
        save, read = (lambda v: dataset.save(_images(v))), (lambda: int(np.asarray(dataset.load()["images"][0]).max()))
    target = link.resolve()
    for value in (1, 2):
        save(value)
        assert link.is_symlink() and link.resolve() == target, f"{kind}: the link was replaced"
        assert read() == value
    assert sorted(p.name for p in project.iterdir()) == [link.name]
    assert not [p.name for p in elsewhere.iterdir() if p.name.startswith(".")]
