"""Ingest: every listed image ends in the image table or the rejected table; bad labels stop the run
with a message that names the file, row or column."""

import pandas as pd
import pytest

from photoid.data.ingest import attach_boxes, groups_found, ingest, read_source
from photoid.errors import DataError


def _happywhale(tmp_path, photo, rows, test=("t1.jpg",)):
    root = tmp_path / "hw"
    for image, _, _ in rows:
        photo(f"hw/train_images/{image}")
    for image in test:
        photo(f"hw/test_images/{image}")
    pd.DataFrame(rows, columns=["image", "species", "individual_id"]).to_csv(root / "train.csv", index=False)
    return root


def _accounted_for(listing, images, rejected):
    assert len(images) + len(rejected) == len(listing)
    assert set(images.image_id) | set(rejected.image_id) == set(listing.image_id)
    assert not set(images.image_id) & set(rejected.image_id)


def test_happywhale_layout(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "bottlenose_dolpin", "id1"), ("b.jpg", "kiler_whale", "id2")])
    listing = read_source("happywhale", root)
    images, rejected, stats, _ = ingest(listing)
    _accounted_for(listing, images, rejected)
    assert stats["train_images"] == 2 and stats["test_images"] == 1 and stats["rejected"] == 0
    # the known misspellings of the Kaggle labels are fixed
    assert set(images.species) == {"bottlenose_dolphin", "killer_whale", "unknown"}
    assert images.loc[images.part == "test", "individual"].tolist() == [""]


def test_unreadable_images_are_rejected_with_reason_and_counted(tmp_path, photo):
    rows = [(f"{n}.jpg", "beluga", f"id{n % 2}") for n in range(6)]
    root = _happywhale(tmp_path, photo, rows)
    (root / "train_images" / "0.jpg").write_bytes(b"")  # zero bytes
    (root / "train_images" / "1.jpg").write_text("<html>404</html>")  # not an image
    data = (root / "train_images" / "2.jpg").read_bytes()
    (root / "train_images" / "2.jpg").write_bytes(data[: len(data) // 3])  # truncated
    photo("hw/train_images/unlabelled.jpg")  # a photo with no row in train.csv
    listing = read_source("happywhale", root)
    images, rejected, stats, _ = ingest(listing)
    _accounted_for(listing, images, rejected)
    reasons = dict(zip(rejected.image_id, rejected.reason))
    assert reasons["0.jpg"] == "empty file (0 bytes)"
    assert reasons["1.jpg"].startswith("not an image")
    assert "truncated" in reasons["2.jpg"].lower()
    assert "not in train.csv" in reasons["unlabelled.jpg"]
    assert stats["rejected"] == 4 and sum(stats["rejected_by_reason"].values()) == 4
    assert stats["images"] == 4  # 3 good train images + 1 test


def test_missing_file_names_the_label_row(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1")])
    with open(root / "train.csv", "a") as f:
        f.write("gone.jpg,beluga,id2\n")
    with pytest.raises(DataError, match=r"(?s)does not exist.*gone\.jpg.*train\.csv line 3"):
        read_source("happywhale", root)


def test_duplicate_image_id_is_an_error(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1"), ("a.jpg", "beluga", "id2")])
    with pytest.raises(DataError, match=r"(?s)duplicate image ids.*a\.jpg: train\.csv line 2.*a\.jpg: train\.csv line 3"):
        read_source("happywhale", root)


def test_missing_column_names_the_column_and_what_the_file_has(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1")])
    pd.DataFrame({"image": ["a.jpg"], "species": ["beluga"], "whale_id": ["id1"]}).to_csv(root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"no individual column; looked for \['individual_id'\].*'whale_id'"):
        read_source("happywhale", root)


def test_empty_label_names_the_row(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1"), ("b.jpg", "beluga", "")])
    with pytest.raises(DataError, match=r"(?s)empty labels.*line 3: empty 'individual_id'"):
        read_source("happywhale", root)


def test_folders_source(tmp_path, photo):
    for ind in ("ind_a", "ind_b"):
        for n in range(2):
            photo(f"fs/{ind}/IMG_000{n}.jpg")  # same file names in both folders
    photo("fs/test/q.jpg")
    (tmp_path / "fs" / "ind_a" / ".DS_Store").write_bytes(b"\x00junk")  # hidden: not read, but not dropped silently
    (tmp_path / "fs" / "ind_b" / "notes.txt").write_text("seen off the pier")  # listed, then rejected
    listing = read_source("folders", tmp_path / "fs", species="Bottlenose Dolphin", test_dir="test")
    images, rejected, stats, _ = ingest(listing)
    _accounted_for(listing, images, rejected)
    assert stats["individuals"] == 2 and stats["train_images"] == 4 and stats["test_images"] == 1
    assert rejected.image_id.tolist() == ["ind_a/.DS_Store", "ind_b/notes.txt"]
    assert rejected.reason.iloc[0].startswith("hidden file") and stats["rejected_by_reason"]["hidden file"] == 1
    assert set(images.species) == {"bottlenose_dolphin", "unknown"}


def test_csv_labels_with_different_columns_per_file(tmp_path, photo):
    photo("cs/whale/w1.jpg"), photo("cs/whale/w2.jpg"), photo("cs/seal/s1.jpg")
    pd.DataFrame({"ID": ["W-1", "W-1"], "Image": ["w1.jpg", "w2.jpg"]}).to_csv(tmp_path / "cs" / "whale.csv", index=False)
    pd.DataFrame({"Image": ["s1.jpg"], "UniqueID": ["S-9"]}).to_csv(tmp_path / "cs" / "seal.csv", index=False)
    listing = read_source("csv", tmp_path / "cs", labels="whale.csv,seal.csv", image_col="Image",
                          individual_col="UniqueID,ID", species_col="species")
    images, rejected, _, _ = ingest(listing)
    assert dict(zip(images.image_id, images.individual)) == {"w1.jpg": "W-1", "w2.jpg": "W-1", "s1.jpg": "S-9"}
    assert dict(zip(images.image_id, images.species)) == {"w1.jpg": "whale", "w2.jpg": "whale", "s1.jpg": "seal"}


def test_a_group_column_of_the_label_files_groups_their_photos(tmp_path, photo):
    photo("cs/whale/w1.jpg"), photo("cs/whale/w2.jpg"), photo("cs/whale/w3.jpg")
    pd.DataFrame({"ID": ["W-1", "W-1", "W-2"], "Image": ["w1.jpg", "w2.jpg", "w3.jpg"],
                  "Encounter": ["2024-06-01", "2024-06-01", ""]}).to_csv(tmp_path / "cs" / "whale.csv", index=False)
    listing = read_source("csv", tmp_path / "cs", labels="whale.csv", image_col="Image", individual_col="ID",
                          group_col="Date,Encounter")
    images, _, _, _ = ingest(listing)
    assert dict(zip(images.image_id, images.group)) == {"w1.jpg": "2024-06-01", "w2.jpg": "2024-06-01", "w3.jpg": ""}
    assert (read_source("csv", tmp_path / "cs", labels="whale.csv", image_col="Image", individual_col="ID")
            .group == "").all()  # no group_col: no groups
    assert groups_found(listing, "Date,Encounter").startswith("1 groups (data.group_col Date,Encounter) over 2 of 3")


def test_a_group_column_the_labels_lack_is_ignored_and_ingest_says_so(tmp_path, photo):
    """data.group_col's default (encounter) needs no clearing for labels without it: each photo is a group of its own."""
    photo("cs/whale/w1.jpg"), photo("cs/whale/w2.jpg"), photo("set/A/a1.jpg")
    pd.DataFrame({"ID": ["W-1", "W-2"], "Image": ["w1.jpg", "w2.jpg"]}).to_csv(tmp_path / "cs" / "whale.csv", index=False)
    listing = read_source("csv", tmp_path / "cs", labels="whale.csv", image_col="Image", individual_col="ID", group_col="Day")
    assert (listing.group == "").all()
    assert "no label file has a data.group_col column (Day)" in groups_found(listing, "Day")
    folders = read_source("folders", tmp_path / "set", group_col="encounter")  # no label file at all
    assert (folders.group == "").all() and "each photo is a group of its own" in groups_found(folders, "encounter")


def test_marine_sample_ingests_as_csv(marine_sample):
    listing = read_source("csv", marine_sample, labels="dolphin.csv,seal.csv,whale.csv", image_col="Image",
                          individual_col="UniqueID,ID")
    images, rejected, stats, _ = ingest(listing, workers=2)
    assert (stats["images"], stats["individuals"], len(stats["species"]), stats["rejected"]) == (58, 16, 3, 0)
    assert (images.width > 0).all() and (images.height > 0).all()


def test_boxes_attach_and_are_clipped(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1"), ("b.jpg", "beluga", "id1")])
    boxes = pd.DataFrame({"image_id": ["a.jpg", "b.jpg"], "box_x1": [5.0, 100.0], "box_y1": [5.0, 100.0],
                          "box_x2": [80.0, 120.0], "box_y2": [20.0, 130.0]})  # b lies wholly outside 64x48
    images, _, stats, _ = ingest(attach_boxes(read_source("happywhale", root), boxes, "boxes.csv"))
    a = images.set_index("image_id").loc["a.jpg"]
    assert (a.box_x1, a.box_x2) == (5.0, 64.0)  # clipped to the width
    assert images.set_index("image_id").loc["b.jpg", ["box_x1"]].isna().all()
    assert stats["images_with_box"] == 1


def test_boxes_for_unknown_images_are_an_error(tmp_path, photo):
    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1")])
    boxes = pd.DataFrame({"image_id": ["zzz.jpg"], "box_x1": [0.0], "box_y1": [0.0], "box_x2": [1.0], "box_y2": [1.0]})
    with pytest.raises(DataError, match="zzz.jpg"):
        attach_boxes(read_source("happywhale", root), boxes, "boxes.csv")


def test_confirmed_test_photos_become_training_photos_of_the_individual_named(tmp_path, photo):
    from photoid.data.ingest import apply_confirmed
    from photoid.data.sources import read_confirmed

    root = _happywhale(tmp_path, photo, [("a.jpg", "beluga", "id1"), ("b.jpg", "beluga", "id2")],
                       test=("t1.jpg", "t2.jpg", "t3.jpg"))
    (root / "test_images" / "t3.jpg").write_bytes(b"")  # rejected by ingest: empty file
    images, rejected, _, _ = ingest(read_source("happywhale", root))
    truth = pd.DataFrame({"image_id": ["t1.jpg", "t2.jpg"], "individual": ["id1", "id9"]})
    decisions = tmp_path / "confirmed.csv"
    decisions.write_text("image,individual_id\nt1.jpg,id1\nt2.jpg,new_whale_7\n")
    moved, truth_after, stats = apply_confirmed(images, rejected, truth, read_confirmed(decisions), str(decisions))
    train = moved[moved.part == "train"].set_index("image_id")["individual"].to_dict()
    assert train == {"a.jpg": "id1", "b.jpg": "id2", "t1.jpg": "id1", "t2.jpg": "new_whale_7"}
    assert truth_after.empty and stats == {"confirmed": 2, "confirmed_new_individuals": 1}
    assert len(moved) == len(images)  # nothing lost: the photos changed part, no row left

    def refused(text):
        decisions.write_text("image,individual_id\n" + text)
        with pytest.raises(DataError) as e:
            apply_confirmed(images, rejected, truth, read_confirmed(decisions), str(decisions))
        return str(e.value)

    assert "line 2: t1.jpg" in refused("t1.jpg,new_individual\n") and "without a name" in refused("t1.jpg,new_individual\n")
    assert "more than once" in refused("t1.jpg,id1\nt1.jpg,id2\n")
    assert "a.jpg" in refused("a.jpg,id2\n") and "not test photos" in refused("a.jpg,id2\n")  # already a training photo
    assert "t3.jpg" in refused("t3.jpg,id1\n") and "ingest rejected" in refused("t3.jpg,id1\n")
    assert "line 2: empty" in refused("t1.jpg,\n")


def test_near_pairs_are_exactly_the_pairs_within_the_distance():
    """The range search finds every pair of hashes at most max_bits apart, and no other (checked
    against comparing every pair), with their distances."""
    import numpy as np

    from photoid.data.duplicates import near_pairs

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (60, 32), dtype=np.uint8)
    flips = rng.random((60, 256)) < rng.choice([0.02, 0.1, 0.3], 60)[:, None]  # copies at several distances
    hashes = np.concatenate([base, np.packbits(np.unpackbits(base, axis=1) ^ flips, axis=1)])
    bits = np.unpackbits(hashes, axis=1).astype(int)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    for max_bits in (0, 10, 24, 60):
        i, j, d = near_pairs(hashes, max_bits)
        expected = {(a, b) for a, b in zip(*np.nonzero(distance <= max_bits)) if a < b}
        assert set(zip(i.tolist(), j.tolist())) == expected and len(i) == len(expected)
        assert (d == distance[i, j]).all()
    assert len(near_pairs(hashes, 24)[0]) > 10  # the case holds pairs to find
