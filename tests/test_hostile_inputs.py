"""The hostile input suite: what field data throws at ingest, one row per case.

Each case starts from a small, valid data set (the happywhale layout unless the case says another),
breaks one thing, and states what must happen: the photo lands in the image table, or in the
rejected table with a reason that says why; or ingest stops with a message naming what to fix.
Whatever does not stop, nothing listed may vanish: images + rejected = listed, every case.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from photoid.data.ingest import attach_boxes, ingest, read_source
from photoid.data.sources import read_boxes
from photoid.errors import DataError
from photoid.images import load_rgb
from tests.conftest import save_photo

CHECKS = dict(min_side=32, duplicates="reject", near_bits=24)  # params.yaml's, but copies rejected (data.duplicates)


def scene(path: Path, seed: int, size=(96, 72), format: str | None = None) -> Path:
    """A smooth picture (a few blobs of colour, no pixel noise): its copies keep their difference hash."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, format=format, quality=95)
    return path


@dataclass
class DataSet:
    """A small valid data set to break: happywhale layout, 3 labelled photos (2 individuals), 2 test photos."""

    root: Path
    source: str = "happywhale"
    rows: list[list[str]] = field(default_factory=lambda: [["a.jpg", "beluga", "id1"], ["b.jpg", "beluga", "id1"],
                                                            ["c.jpg", "beluga", "id2"]])
    options: dict = field(default_factory=dict)
    checks: dict = field(default_factory=lambda: dict(CHECKS))
    csv_text: str | None = None  # train.csv written as given (encoding, separator cases)
    boxes: str | None = None  # a box file's text

    def __post_init__(self):
        for n, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
            scene(self.root / "train_images" / name, n)
        for n, name in enumerate(["t1.jpg", "t2.jpg"]):
            scene(self.root / "test_images" / name, 10 + n)

    def train(self, name: str) -> Path:
        return self.root / "train_images" / name

    def test(self, name: str) -> Path:
        return self.root / "test_images" / name

    def ingest(self):
        if self.source == "happywhale" and self.csv_text is None and self.rows is not None:
            pd.DataFrame(self.rows, columns=["image", "species", "individual_id"]).to_csv(self.root / "train.csv", index=False)
        elif self.csv_text is not None:
            (self.root / "train.csv").write_bytes(self.csv_text if isinstance(self.csv_text, bytes)
                                                  else self.csv_text.encode())
        listing = read_source(self.source, self.root, **self.options)
        if self.boxes is not None:
            (self.root / "boxes.csv").write_text(self.boxes)
            listing = attach_boxes(listing, read_boxes(self.root / "boxes.csv"), "boxes.csv")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = ingest(listing, workers=1, progress=False, **self.checks)
        return listing, result, caught


# --- what a case expects ---------------------------------------------------------------------------

def rejected(image_id: str, reason: str):
    def check(result):
        reasons = dict(zip(result.rejected.image_id, result.rejected.reason))
        assert image_id in reasons, f"{image_id} not rejected; rejected: {reasons}"
        assert reason.lower() in reasons[image_id].lower(), reasons[image_id]
    return check


def accepted(image_id: str, then=None):
    def check(result):
        rows = result.images.set_index("image_id")
        reasons = dict(zip(result.rejected.image_id, result.rejected.reason))
        assert image_id in rows.index, f"{image_id} not accepted; rejected: {reasons}"
        if then is not None:
            then(rows.loc[image_id], result)
    return check


def stops(message: str):
    return message  # a DataError whose text holds this fragment


def all_of(*checks):
    def check(result):
        for c in checks:
            c(result)
    return check


# --- breaking things -------------------------------------------------------------------------------

def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def truncate(path: Path, keep: float = 0.4) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def link(path: Path, target: str | Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def heic(path: Path) -> None:
    write(path, b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)


def sized(path: Path, w: int, h: int) -> None:
    save_photo(path, size=(w, h))


def twelve_bit(path: Path) -> None:
    arr = (np.linspace(0, 4095, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(arr).save(path)  # a camera's 12-bit samples in a 16-bit PNG


def near_copy(src: Path, dst: Path) -> None:
    with Image.open(src) as img:
        img.convert("RGB").resize((img.width - 6, img.height - 4)).save(dst, quality=60)


def csv_with(ds: DataSet, text: str, encoding: str = "utf-8") -> None:
    ds.csv_text = text.encode(encoding)


HEADER = "image,species,individual_id\n"
BODY = "a.jpg,beluga,id1\nb.jpg,beluga,id1\nc.jpg,beluga,id2\n"


def folders(ds: DataSet) -> None:
    """Turn the data set into the folders layout: root/<individual>/<photos>, root/test/."""
    import shutil

    for name, individual in (("a.jpg", "id1"), ("b.jpg", "id1"), ("c.jpg", "id2")):
        write(ds.root / "fs" / individual / name, ds.train(name).read_bytes())
    for name in ("t1.jpg", "t2.jpg"):
        write(ds.root / "fs" / "test" / name, ds.test(name).read_bytes())
    shutil.rmtree(ds.root / "train_images"), shutil.rmtree(ds.root / "test_images")
    ds.root, ds.source, ds.options = ds.root / "fs", "folders", dict(test_dir="test")


def csv_source(ds: DataSet, image_dir: str = "") -> None:
    """Turn it into the csv source: labels.csv with bare names; photos under root/photos/."""
    import shutil

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write(ds.root / "photos" / name, ds.train(name).read_bytes())
    shutil.rmtree(ds.root / "train_images")
    (ds.root / "labels.csv").write_text("Image,ID\na.jpg,id1\nb.jpg,id1\nc.jpg,id2\n")
    ds.source = "csv"
    ds.options = dict(labels="labels.csv", image_col="Image", individual_col="ID", test_dir="test_images",
                      image_dir=image_dir)


def nfd_on_disk(ds: DataSet) -> None:
    name = "café.jpg"
    scene(ds.train(unicodedata.normalize("NFD", name)), 5)
    ds.rows.append([unicodedata.normalize("NFC", name), "beluga", "id3"])


def nfc_on_disk(ds: DataSet) -> None:
    name = "café.jpg"
    scene(ds.train(unicodedata.normalize("NFC", name)), 5)
    ds.rows.append([unicodedata.normalize("NFD", name), "beluga", "id3"])


def bomb_limits(monkeypatch, pixels: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)


def is_bright_enough(row, result) -> None:
    grey = np.asarray(load_rgb(row.path))[..., 0]
    assert grey.max() > 240 and 100 < grey.mean() < 160, (grey.min(), grey.mean(), grey.max())


def size_is(w: int, h: int):
    def then(row, result):
        assert (row.width, row.height) == (w, h)
    return then


def boxes_are(main: list[float], others: list[float]):
    def then(row, result):
        assert [row.box_x1, row.box_y1, row.box_x2, row.box_y2] == main
        assert list(row.other_boxes) == others
    return then


def counted(key: str, value: int):
    def check(result):
        assert result.stats["duplicates"][key] == value, result.stats["duplicates"]
    return check


def warned(fragment: str):
    def check(result):
        assert any(fragment in w for w in result.stats["warnings"]), result.stats["warnings"]
    return check


def duplicate_pair(image_id: str, of: str, kind: str):
    def check(result):
        pairs = set(zip(result.duplicates.image_id, result.duplicates.duplicate_of, result.duplicates.kind))
        assert (image_id, of, kind) in pairs, pairs
    return check


def exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((40, 100, 3), 90, np.uint8)).save(path, exif=exif)


def cmyk(path: Path) -> None:
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).convert("CMYK").save(path)


# (id, what it does to the data set, what must happen)
CASES = [
    # unusable photos: rejected, with their reason, wherever they are
    ("empty-train", lambda ds: write(ds.train("a.jpg"), b""), rejected("a.jpg", "empty file")),
    ("empty-test", lambda ds: write(ds.test("t1.jpg"), b""), rejected("t1.jpg", "empty file")),
    ("text-as-jpg", lambda ds: write(ds.train("a.jpg"), "field notes"), rejected("a.jpg", "not an image")),
    ("html-error-page", lambda ds: write(ds.test("t1.jpg"), "<html><body>404 Not Found</body></html>"),
     rejected("t1.jpg", "not an image")),
    ("truncated-jpeg", lambda ds: truncate(ds.train("b.jpg")), rejected("b.jpg", "truncated")),
    ("truncated-test-jpeg", lambda ds: truncate(ds.test("t2.jpg"), 0.7), rejected("t2.jpg", "truncated")),
    ("jpeg-without-end-marker", lambda ds: write(ds.test("t2.jpg"), ds.test("t2.jpg").read_bytes()[:-2]),
     rejected("t2.jpg", "ends before the JPEG end marker (FF D9)")),
    ("header-only-jpeg", lambda ds: truncate(ds.train("c.jpg"), 0.05), rejected("c.jpg", "")),
    ("corrupt-png", lambda ds: (save_photo(ds.test("p.png"), size=(200, 100)),
                                write(ds.test("p.png"), ds.test("p.png").read_bytes()[:60] + b"\x00" * 60
                                      + ds.test("p.png").read_bytes()[120:])), rejected("p.png", "corrupt")),
    ("heic", lambda ds: heic(ds.test("IMG_0001.HEIC")), rejected("IMG_0001.HEIC", "HEIC/HEIF photo: not supported")),
    ("broken-link-test", lambda ds: link(ds.test("gone.jpg"), "/mnt/unmounted/gone.jpg"),
     rejected("gone.jpg", "broken link (points to /mnt/unmounted/gone.jpg")),
    ("broken-link-train-labelled", lambda ds: (ds.train("a.jpg").unlink(), link(ds.train("a.jpg"), "/mnt/nas/a.jpg")),
     rejected("a.jpg", "broken link")),
    ("broken-link-train-unlabelled", lambda ds: link(ds.train("x.jpg"), "nowhere.jpg"), rejected("x.jpg", "broken link")),
    ("symlink-loop", lambda ds: link(ds.test("loop.jpg"), ds.test("loop.jpg")), rejected("loop.jpg", "loop")),
    ("link-to-a-photo", lambda ds: link(ds.test("linked.jpg"), scene(ds.root.parent / "elsewhere.jpg", 4)),
     accepted("linked.jpg")),
    ("link-to-a-training-photo", lambda ds: link(ds.test("linked.jpg"), ds.train("a.jpg")),
     rejected("linked.jpg", "exact copy of a training photo: a.jpg")),
    ("1x1", lambda ds: sized(ds.test("dot.png"), 1, 1), rejected("dot.png", "too small to identify (1x1")),
    ("8x8", lambda ds: sized(ds.train("a.jpg"), 8, 8), rejected("a.jpg", "data.min_side is 32")),
    ("thin-strip", lambda ds: sized(ds.test("strip.jpg"), 400, 20), rejected("strip.jpg", "400x20")),
    ("min-side-exactly", lambda ds: sized(ds.test("small.jpg"), 32, 32), accepted("small.jpg")),
    ("decompression-bomb", lambda ds: bomb_limits(ds.monkeypatch, 1000), rejected("a.jpg", "too large to decode safely")),
    ("large-photo-warns-nothing", lambda ds: bomb_limits(ds.monkeypatch, 5000), accepted("a.jpg")),
    # unlabelled, hidden and stray files: listed, never dropped
    ("unlabelled-train", lambda ds: scene(ds.train("extra.jpg"), 7), rejected("extra.jpg", "not in train.csv")),
    ("unlabelled-in-subfolder", lambda ds: scene(ds.train("2024/extra.jpg"), 7), rejected("2024/extra.jpg", "not in train.csv")),
    ("unlabelled-in-subfolder-same-name", lambda ds: scene(ds.train("2024/a.jpg"), 7),
     all_of(rejected("2024/a.jpg", "not in train.csv"), accepted("a.jpg"))),
    ("hidden-file-test", lambda ds: write(ds.test(".DS_Store"), b"\x00\x01junk"),
     rejected("test_images/.DS_Store", "hidden file")),
    ("hidden-folder-train", lambda ds: scene(ds.train(".thumbs/a.jpg"), 0), rejected("train_images/.thumbs/a.jpg", "hidden")),
    ("appledouble", lambda ds: write(ds.test("._t1.jpg"), b"\x00\x05\x16\x07junk"), rejected("test_images/._t1.jpg", "hidden")),
    # odd but valid photos: accepted as they are seen
    ("exif-rotated", lambda ds: exif_rotated(ds.test("rot.jpg")), accepted("rot.jpg", size_is(40, 100))),
    ("cmyk", lambda ds: cmyk(ds.test("cmyk.jpg")), accepted("cmyk.jpg")),
    ("grey", lambda ds: save_photo(ds.test("grey.png"), mode="L"), accepted("grey.png")),
    ("palette-alpha", lambda ds: save_photo(ds.test("pal.png"), mode="P", transparency=0), accepted("pal.png")),
    ("rgba", lambda ds: save_photo(ds.test("rgba.png"), mode="RGBA"), accepted("rgba.png")),
    ("twelve-bit-in-16", lambda ds: twelve_bit(ds.test("deep.png")), accepted("deep.png", is_bright_enough)),
    ("tiff", lambda ds: save_photo(ds.test("scan.tif")), accepted("scan.tif")),
    ("webp", lambda ds: save_photo(ds.test("phone.webp")), accepted("phone.webp")),
    ("bmp", lambda ds: save_photo(ds.test("old.bmp")), accepted("old.bmp")),
    ("gif", lambda ds: save_photo(ds.test("anim.gif")), accepted("anim.gif")),
    ("upper-case-extension", lambda ds: scene(ds.test("IMG_0002.JPG"), 8), accepted("IMG_0002.JPG")),
    ("no-extension", lambda ds: scene(ds.test("IMG_0003"), 8, format="JPEG"), accepted("IMG_0003")),
    ("png-named-jpg", lambda ds: save_photo(ds.test("really_png.jpg"), format="PNG"), accepted("really_png.jpg")),
    # copies: reported; the test copy of a training photo is a leak, rejected by default
    ("test-copy-of-train", lambda ds: write(ds.test("t9.jpg"), ds.train("a.jpg").read_bytes()),
     all_of(rejected("t9.jpg", "exact copy of a training photo: a.jpg (individual id1)"),
            counted("exact_train_test", 1), counted("exact_train_test_rejected", 1))),
    ("test-copy-kept", lambda ds: (write(ds.test("t9.jpg"), ds.train("a.jpg").read_bytes()),
                                   ds.checks.update(duplicates="keep")),
     all_of(accepted("t9.jpg"), duplicate_pair("t9.jpg", "a.jpg", "exact"), warned("exact copies of training photos"))),
    ("near-copy-train-test", lambda ds: near_copy(ds.train("b.jpg"), ds.test("t9.jpg")),
     all_of(accepted("t9.jpg"), duplicate_pair("t9.jpg", "b.jpg", "near"), counted("near_train_test", 1))),
    ("copy-under-two-labels", lambda ds: (write(ds.train("d.jpg"), ds.train("a.jpg").read_bytes()),
                                          ds.rows.append(["d.jpg", "beluga", "id2"])),
     all_of(accepted("d.jpg"), counted("exact_with_two_individuals", 1), warned("labelled as another individual"))),
    ("copy-within-test", lambda ds: write(ds.test("t9.jpg"), ds.test("t1.jpg").read_bytes()),
     all_of(accepted("t9.jpg"), counted("exact_within_test", 1))),
    ("near-copies-off", lambda ds: (near_copy(ds.train("b.jpg"), ds.test("t9.jpg")), ds.checks.update(near_bits=-1)),
     counted("near_train_test", 0)),
    # label files: read what a spreadsheet writes, or stop naming what to fix
    ("semicolons", lambda ds: csv_with(ds, HEADER.replace(",", ";") + BODY.replace(",", ";")), accepted("a.jpg")),
    ("tabs", lambda ds: csv_with(ds, HEADER.replace(",", "\t") + BODY.replace(",", "\t")), accepted("c.jpg")),
    ("latin-1", lambda ds: (scene(ds.train("Baie-Comeau_é.jpg"), 6),
                            csv_with(ds, HEADER + BODY + "Baie-Comeau_é.jpg,beluga,id3\n", "latin-1")),
     accepted("Baie-Comeau_é.jpg")),
    ("utf-16", lambda ds: csv_with(ds, HEADER + BODY, "utf-16"), accepted("b.jpg")),
    ("utf-8-bom", lambda ds: csv_with(ds, HEADER + BODY, "utf-8-sig"), accepted("a.jpg")),
    ("windows-line-ends", lambda ds: csv_with(ds, (HEADER + BODY).replace("\n", "\r\n")), accepted("c.jpg")),
    ("spaces-around-cells", lambda ds: csv_with(ds, HEADER + BODY.replace(",", " , ")), accepted("a.jpg")),
    ("nfd-on-disk", nfd_on_disk, accepted(unicodedata.normalize("NFC", "café.jpg"))),
    ("nfc-on-disk", nfc_on_disk, accepted(unicodedata.normalize("NFD", "café.jpg"))),
    ("missing-file", lambda ds: ds.rows.append(["gone.jpg", "beluga", "id3"]),
     stops("does not exist (1):\n  {root}/train_images/gone.jpg (train.csv line 5)")),
    ("duplicate-row", lambda ds: ds.rows.append(["a.jpg", "beluga", "id2"]), stops("duplicate image ids")),
    ("empty-individual", lambda ds: ds.rows.append(["z.jpg", "beluga", ""]), stops("line 5: empty 'individual_id'")),
    ("wrong-column", lambda ds: csv_with(ds, HEADER.replace("individual_id", "whale") + BODY),
     stops("no individual column; looked for ['individual_id']")),
    ("no-train-csv", lambda ds: setattr(ds, "rows", None), stops("label file {root}/train.csv does not exist")),
    ("no-train-images", lambda ds: __import__("shutil").rmtree(ds.root / "train_images"),
     stops("train_images does not exist: the happywhale layout needs")),
    ("no-test-images", lambda ds: __import__("shutil").rmtree(ds.root / "test_images"),
     stops("test_images does not exist: the happywhale layout needs")),
    ("empty-test-images", lambda ds: [p.unlink() for p in (ds.root / "test_images").iterdir()],
     warned("no test photos: nothing to identify")),
    # the folders layout
    ("folders-broken-individual", lambda ds: (folders(ds), link(ds.root / "id3" / "1.jpg", "/mnt/usb/1.jpg"),
                                              link(ds.root / "id3" / "2.jpg", "/mnt/usb/2.jpg")),
     all_of(rejected("id3/1.jpg", "broken link"), rejected("id3/2.jpg", "broken link"))),
    ("folders-linked-individual", lambda ds: (folders(ds), link(ds.root / "id4", ds.root / "id1")),
     accepted("id4/a.jpg", lambda row, r: row.individual == "id4")),
    ("folders-nested", lambda ds: (folders(ds), scene(ds.root / "id1" / "2019" / "e.jpg", 9)), accepted("id1/2019/e.jpg")),
    ("folders-stray-file", lambda ds: (folders(ds), scene(ds.root / "lost.jpg", 9)),
     rejected("lost.jpg", "not in an individual's folder")),
    ("folders-hidden-folder", lambda ds: (folders(ds), scene(ds.root / ".Trash" / "old.jpg", 9)),
     rejected(".Trash/old.jpg", "hidden")),
    ("folders-link-loop-folder", lambda ds: (folders(ds), link(ds.root / "id1" / "again", ds.root / "id1")),
     accepted("id1/a.jpg")),
    ("folders-no-test-dir", lambda ds: (folders(ds), ds.options.update(test_dir="tset")), stops("data.test_dir")),
    # the csv source: where its images may be
    ("csv-image-dir", lambda ds: csv_source(ds, image_dir="photos"), accepted("b.jpg")),
    ("csv-images-nowhere", lambda ds: csv_source(ds), stops("labels.csv line 2; looked in {root}, {root}/labels)")),
    ("csv-bad-image-dir", lambda ds: csv_source(ds, image_dir="fotos"), stops("data.image_dir")),
    # box files
    ("box-not-a-number", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2\na.jpg,1,2,x,40\n"), stops("not numbers")),
    ("box-inverted", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2\na.jpg,50,2,10,40\n"), stops("x2 <= x1")),
    ("box-unknown-image", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2\nzz.jpg,1,2,10,40\n"), stops("zz.jpg")),
    ("two-fins-one-photo", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2\na.jpg,0,0,20,20\na.jpg,10,10,90,70\n"),
     accepted("a.jpg", boxes_are([10, 10, 90, 70], [0, 0, 20, 20]))),  # the label goes with the largest
    ("two-fins-main-marked", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2,main\na.jpg,0,0,20,20,1\n"
                                                               "a.jpg,10,10,90,70,0\nb.jpg,5,5,50,50,\n"),
     all_of(accepted("a.jpg", boxes_are([0, 0, 20, 20], [10, 10, 90, 70])), accepted("b.jpg", boxes_are([5, 5, 50, 50], [])))),
    ("other-box-outside", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2\na.jpg,10,10,90,70\na.jpg,200,0,220,10\n"
                                                            "a.jpg,90,60,120,90\n"),
     accepted("a.jpg", boxes_are([10, 10, 90, 70], [90, 60, 96, 72]))),  # clipped to 96x72; the one outside dropped
    ("two-main-boxes", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2,main\na.jpg,0,0,20,20,1\na.jpg,10,10,90,70,1\n"),
     stops("more than one box marked main (1):\n  a.jpg")),
    ("main-not-yes-no", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2,main\na.jpg,0,0,20,20,maybe\n"),
     stops("'main' values that are not yes or no (1):\n  line 2")),
    ("box-outside-image", lambda ds: setattr(ds, "boxes", "image,x1,y1,x2,y2\na.jpg,500,500,600,600\n"),
     accepted("a.jpg", lambda row, r: np.isnan(row.box_x1))),
]


@pytest.mark.parametrize("break_it, expect", [pytest.param(b, e, id=i) for i, b, e in CASES])
def test_hostile_input(tmp_path, monkeypatch, break_it, expect):
    ds = DataSet(tmp_path / "hw")
    ds.monkeypatch = monkeypatch
    break_it(ds)
    if isinstance(expect, str):
        with pytest.raises(DataError) as e:
            ds.ingest()
        fragment = expect.format(root=ds.root)
        assert fragment in str(e.value), str(e.value)
        return
    listing, result, caught = ds.ingest()
    images, rejected_ = result.images, result.rejected
    # nothing vanishes: every listed path is in exactly one table
    assert len(images) + len(rejected_) == len(listing)
    assert set(images.image_id) | set(rejected_.image_id) == set(listing.image_id)
    assert not set(images.image_id) & set(rejected_.image_id)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    expect(result)


def _run(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)


def test_the_stage_reports_copies_and_warnings_and_check_data_lists_what_dvc_cannot_hash(tmp_path):
    """A broken link under data.root stops `dvc repro` in DVC's own hashing ([Errno 2]), before ingest
    runs: `photoid check-data` names it, with everything else ingest would reject, writing nothing."""
    import json

    from tests.conftest import REPO

    ds = DataSet(tmp_path / "hw")
    write(ds.test("t9.jpg"), ds.train("a.jpg").read_bytes())  # a leak
    [p.unlink() for p in (ds.root / "test_images").glob("t[12].jpg")]
    pd.DataFrame(ds.rows, columns=["image", "species", "individual_id"]).to_csv(ds.root / "train.csv", index=False)
    given = ["--params", str(REPO / "params.yaml"), "--set", "data.source=happywhale", "--set", f"data.root={ds.root}",
             "--set", "data.group_col=", "--set", "data.duplicates=reject"]
    done = _run("stages/ingest.py", *given, "--out-dir", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"),
                cwd=REPO)
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "m.json").read_text())
    assert stats["duplicates"]["exact_train_test_rejected"] == 1 and stats["test_images"] == 0
    assert any("no test photos" in w for w in stats["warnings"]) and "warning: no test photos" in done.stderr
    pairs = pd.read_parquet(tmp_path / "out" / "duplicates.parquet")
    assert pairs[["image_id", "duplicate_of", "kind"]].values.tolist() == [["t9.jpg", "a.jpg", "exact"]]

    link(ds.test("gone.jpg"), "/mnt/usb/gone.jpg")
    checked = _run("-m", "photoid.console", "check-data", *given, "--out", str(tmp_path / "bad.csv"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "broken link: " in checked.stdout and "gone.jpg" in checked.stdout
    assert "exact copy of a training photo" in checked.stdout
    assert set(pd.read_csv(tmp_path / "bad.csv")["image_id"]) == {"gone.jpg", "t9.jpg"}
    (ds.root / "train.csv").write_text("image,species,individual_id\na.jpg,beluga,\n")
    refused = _run("-m", "photoid.console", "check-data", *given, cwd=tmp_path)
    assert refused.returncode == 2 and "line 2: empty 'individual_id'" in refused.stderr and "Traceback" not in refused.stderr


def test_a_stage_whose_input_table_is_missing_says_which_and_writes_nothing(tmp_path):
    """Run out of order (or with a wrong path), a stage stops with a message that names the missing
    file and what to run, exit status 2, no traceback, and no output."""
    from tests.conftest import REPO

    missing = tmp_path / "filtered.parquet"
    done = _run("stages/split.py", "--params", str(REPO / "params.yaml"), "--filtered", str(missing),
                "--out", str(tmp_path / "split.parquet"), "--metrics", str(tmp_path / "split.json"), cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert f"error: {missing} does not exist" in done.stderr and "dvc repro" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "split.parquet").exists() and not (tmp_path / "split.json").exists()
