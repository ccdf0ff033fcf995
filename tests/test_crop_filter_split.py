"""Crop keeps the aspect ratio (or stretches the box over the square when asked) and the margin; filter
counts and never touches test; split holds individuals out whole and deals the others over the folds."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from photoid.crop import crop_all, crop_to_square, expand_box
from photoid.data.filter import filter_individuals
from photoid.data.split import NEW_FOLD, fold_view, split_folds
from photoid.errors import DataError


def test_expand_box_adds_margin_and_clips():
    assert expand_box((10, 20, 30, 60), 0.1, 100, 100) == pytest.approx((8, 16, 32, 64))
    assert expand_box((0, 0, 100, 50), 0.5, 100, 50) == (0, 0, 100, 50)


def test_crop_keeps_aspect_ratio():
    img = Image.new("RGB", (400, 300), (0, 0, 0))
    img.paste((255, 255, 255), (100, 100, 300, 150))  # a white 200 x 50 box
    out = np.asarray(crop_to_square(img, (100, 100, 300, 150), 64))
    assert out.shape == (64, 64, 3)
    rows, cols = np.nonzero(out[..., 0] > 128)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert width == 64 and height == pytest.approx(16, abs=1)  # 4:1 as in the photo, padded above and below


def test_a_stretched_crop_shows_the_box_on_every_pixel_and_nothing_else():
    img = Image.new("RGB", (400, 300), (0, 0, 0))
    img.paste((255, 255, 255), (100, 100, 300, 150))  # a white 200 x 50 box, black around it
    img.paste((255, 0, 0), (100, 100, 120, 150))  # its left tenth red
    out = np.asarray(crop_to_square(img, (100, 100, 300, 150), 64, fit="stretch")).astype(int)
    assert out.shape == (64, 64, 3)
    assert (out.min(axis=2)[:, 10:] > 200).all()  # white from the top row to the bottom, no black bars
    assert (out[:, :5, 0] > 200).all() and (out[:, :5, 1] < 60).all()  # the red tenth is still a tenth: 6 of 64 columns
    with pytest.raises(DataError, match="crop.fit"):
        crop_to_square(img, (100, 100, 300, 150), 64, fit="fill")


def test_crop_all_streams_large_jpegs_and_records_paths(tmp_path):
    big = tmp_path / "big.jpg"
    arr = np.zeros((3000, 4000, 3), np.uint8)
    arr[1000:2000, 1000:3000] = (200, 50, 50)
    Image.fromarray(arr).save(big, quality=90)
    images = pd.DataFrame([dict(image_id="big.jpg", path=str(big), part="train", individual="a", species="s",
                                group="enc-7", width=4000, height=3000)])
    boxes = pd.DataFrame([dict(image_id="big.jpg", x1=1000.0, y1=1000.0, x2=3000.0, y2=2000.0, confidence=0.9,
                               box_source="detector")])
    table = crop_all(images, boxes, tmp_path / "crops", size=128, margin=0.0)
    crop = np.asarray(Image.open(table.crop_path[0]))
    assert crop.shape == (128, 128, 3)
    assert crop[32:96, :, 0].mean() > 150 and crop[:28].mean() < 20  # the red box fills the middle band
    assert table.group[0] == "enc-7"  # the labels go with the crop, its group (encounter) among them
    tall = crop_all(images, boxes.assign(x1=1900.0, x2=2100.0), tmp_path / "tall", size=128, margin=0.0, fit="stretch")
    crop = np.asarray(Image.open(tall.crop_path[0])).astype(int)  # a 200 x 1000 strip of the red box, decoded
    assert (crop[..., 0] > 150).all() and (crop[..., 1] < 100).all()  # small enough to stretch it over all 128 x 128


def test_crop_all_refuses_images_without_box(tmp_path):
    images = pd.DataFrame([dict(image_id="x", path="x.jpg", part="train", individual="a", species="s", width=10, height=10)])
    boxes = pd.DataFrame(columns=["image_id", "x1", "y1", "x2", "y2", "confidence", "box_source"])
    with pytest.raises(ValueError, match="re-run the detect stage"):
        crop_all(images, boxes, tmp_path, size=8, margin=0)


def _table(counts: dict[str, int], species="s", n_test=3) -> pd.DataFrame:
    rows = [dict(image_id=f"{ind}_{k}", part="train", individual=ind, species=species)
            for ind, n in counts.items() for k in range(n)]
    rows += [dict(image_id=f"t{k}", part="test", individual="", species="unknown") for k in range(n_test)]
    return pd.DataFrame(rows)


def test_photos_of_one_encounter_never_straddle_folds():
    """With data.group_col, an individual's groups (encounters) are dealt over the folds, not its photos:
    a fold never validates on a photo whose burst siblings it trains on."""
    table = _table({f"a{i}": 3 + i % 7 for i in range(24)}, species="dolphin")
    train = table.part == "train"
    encounter = {ind: 0 for ind in table.individual}
    groups = []
    for r in table.itertuples():  # bursts of two or three photos per encounter
        if r.part != "train":
            groups.append("")
            continue
        groups.append(f"{r.individual}-e{encounter[r.individual] // (2 + int(r.individual[1:]) % 2)}")
        encounter[r.individual] += 1
    grouped = table.assign(group=groups)
    split, stats = split_folds(grouped, n_folds=3, new_fraction=0.2, seed=1)
    assert split.groupby("group").fold.nunique().max() == 1
    assert stats["groups"] == grouped.loc[train, "group"].nunique()
    loose, _ = split_folds(table, n_folds=3, new_fraction=0.2, seed=1)
    assert loose.merge(split[["image_id", "group"]]).groupby("group").fold.nunique().max() > 1  # without: they would
    # an individual seen in one encounter only sits in one fold (in its validation it plays a new animal)
    single = split[~split.is_new].groupby("individual").filter(lambda g: g.group.nunique() == 1)
    assert len(single) and single.groupby("individual").fold.nunique().max() == 1
    # and the classifier of that fold validates only on the individuals it trains on (it crashed on label -1)
    from photoid.train.fold import FoldData

    for fold in range(3):
        data = FoldData.of(split, fold)
        known = data.known_val()
        assert (data.labels(known) >= 0).all() and len(known)
        alone_here = set(single.loc[single.fold == fold, "individual"])
        assert not alone_here & set(known.individual) and alone_here <= set(data.val.individual)


def test_without_groups_the_split_is_the_photo_by_photo_one():
    """No group column, an empty one, or every photo a group of its own: the same folds, photo by photo."""
    table = _table({f"a{i}": 2 + i % 6 for i in range(20)})
    plain, stats = split_folds(table, n_folds=3, new_fraction=0.2, seed=4)
    for same in (table.assign(group=""), table.assign(group=table.image_id)):
        pd.testing.assert_series_equal(split_folds(same, n_folds=3, new_fraction=0.2, seed=4)[0].fold, plain.fold)
    assert stats["groups"] == 0


def test_filter_drops_small_individuals_only_from_training():
    kept, dropped, stats = filter_individuals(_table({"a": 1, "b": 3, "c": 4, "d": 9}), min_samples=4)
    assert set(kept.loc[kept.part == "train", "individual"]) == {"c", "d"}
    assert (kept.part == "test").sum() == 3
    assert set(dropped.individual) == {"a", "b"} and len(dropped) == 4
    assert dropped.reason.iloc[0] == "individual has 1 training image < filter.min_samples=4"
    assert stats == {"min_samples": 4, "individuals_before": 4, "individuals_after": 2, "train_images_before": 17,
                     "train_images_after": 13, "test_images": 3}


def test_filter_that_would_leave_nothing_to_train_on_stops_and_says_which_setting_keeps_two_individuals():
    with pytest.raises(DataError, match=r"0 of 3 individuals .*-S filter.min_samples=2 keeps 2"):
        filter_individuals(_table({"a": 1, "b": 2, "c": 3}), min_samples=4)
    with pytest.raises(DataError, match="add labelled photos of at least 2 individuals"):
        filter_individuals(_table({"a": 9}), min_samples=4)


def test_split_is_deterministic_grouped_and_stratified():
    table = pd.concat([_table({f"a{i}": 4 + i % 5 for i in range(20)}, species="dolphin"),
                       _table({f"b{i}": 5 for i in range(10)}, species="orca", n_test=0)])
    split, stats = split_folds(table, n_folds=3, new_fraction=0.2, seed=1)
    again, _ = split_folds(table, n_folds=3, new_fraction=0.2, seed=1)
    pd.testing.assert_frame_equal(split, again)
    assert (split.part == "train").all()
    # new individuals are held out whole, 20 % per species
    new = split[split.is_new]
    assert (new.fold == NEW_FOLD).all() and not (split[~split.is_new].fold == NEW_FOLD).any()
    assert new.groupby("species").individual.nunique().to_dict() == {"dolphin": 4, "orca": 2}
    # each known individual is spread over the folds: no fold has more than ceil(n/k) of its images
    for ind, g in split[~split.is_new].groupby("individual"):
        assert g.fold.value_counts().max() <= int(np.ceil(len(g) / 3))
    for f in range(3):
        tr, va = fold_view(split, f)
        assert not set(tr.image_id) & set(va.image_id)
        assert set(va[~va.is_new].individual) <= set(tr.individual)  # known val animals are in training
        assert not set(va[va.is_new].individual) & set(tr.individual)
