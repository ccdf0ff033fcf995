"""The demo data set: deterministic, uneven, boxed, with known and new individuals in test."""

import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from photoid.data import demo, sources
from photoid.data.ingest import read_source

TINY = demo.DemoConfig(seed=3, individuals=8, new_individuals=3, mean_images=4, test_known_fraction=0.5,
                       test_per_new=2, width=160, height=120, photos_per_encounter=1.0)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_photos(tmp_path):
    demo.generate(tmp_path / "a", TINY, progress=False)
    demo.generate(tmp_path / "b", TINY, progress=False)
    demo.generate(tmp_path / "c", demo.DemoConfig(**{**TINY.__dict__, "seed": 4}), progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_the_same_files_whatever_the_number_of_processes(tmp_path):
    cfg = demo.DemoConfig(**{**TINY.__dict__, "individuals": 30, "width": 96, "height": 72})
    one = demo.generate(tmp_path / "one", cfg, progress=False)
    two = demo.generate(tmp_path / "two", cfg, progress=False, workers=2)
    assert one == two and one["train_images"] + one["test_images"] >= 100  # drawn in several runs
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_layout_counts_boxes_and_truth(tmp_path):
    counts = demo.generate(tmp_path, TINY, progress=False)
    listing = sources.read_happywhale(tmp_path)  # the demo is read like real Happywhale data
    train = pd.read_csv(tmp_path / "train.csv")
    boxes = pd.read_csv(tmp_path / "boxes.csv")
    truth = pd.read_csv(tmp_path / "test_truth.csv")
    assert len(listing) == counts["train_images"] + counts["test_images"]
    assert set(boxes.image) == set(listing.image_id)  # every image has its fin box
    assert ((boxes.x2 > boxes.x1) & (boxes.y2 > boxes.y1)).all()
    assert set(train.species) == set(demo.SPECIES)
    assert train.individual_id.nunique() == TINY.individuals
    # truth is kept apart: test labels are not in train.csv, and test has both known and new animals
    assert not set(truth.image) & set(train.image)
    known = truth.individual_id.isin(train.individual_id)
    assert known.sum() == counts["test_known"] > 0 and (~known).sum() == counts["test_new"] == 6


def test_photos_per_individual_are_uneven():
    rng = np.random.default_rng(0)
    counts = demo._training_counts(rng, 200, mean=7)
    assert counts.min() >= 1 and (counts <= 3).mean() > 0.15 and counts.max() >= 15


def test_markings_persist_and_differ_between_individuals():
    fin_a = demo.make_fin(np.random.default_rng([0, 1, 1]), "bottlenose_dolphin")
    again = demo.make_fin(np.random.default_rng([0, 1, 1]), "bottlenose_dolphin")
    fin_b = demo.make_fin(np.random.default_rng([0, 2, 1]), "bottlenose_dolphin")
    assert fin_a == again  # the same individual is drawn from the same fin every time
    assert fin_a.notches != fin_b.notches and fin_a.patches != fin_b.patches
    assert len(fin_a.notches) >= 1  # every fin has at least one notch


def test_species_fins_differ_in_shape():
    rng = np.random.default_rng(0)
    dolphins = [demo.make_fin(rng, "bottlenose_dolphin").height for _ in range(20)]
    orcas = [demo.make_fin(rng, "killer_whale").height for _ in range(20)]
    assert max(dolphins) < min(orcas)  # orca fins are tall, dolphin fins low and falcate


def test_notch_cuts_into_the_trailing_edge():
    fin = demo.make_fin(np.random.default_rng(0), "bottlenose_dolphin")
    smooth = demo.Fin(**{**fin.__dict__, "notches": []})

    def area(f):
        return demo.render_fin(f).getchannel("A").histogram()[255]

    assert area(fin) < area(smooth)


def test_encounters_share_sea_light_and_side_and_are_labelled_for_the_split(tmp_path):
    cfg = demo.DemoConfig(**{**TINY.__dict__, "individuals": 12, "mean_images": 8, "photos_per_encounter": 3.0,
                             "width": 96, "height": 72})
    demo.generate(tmp_path / "d", cfg, progress=False)
    train = pd.read_csv(tmp_path / "d" / "train.csv")
    assert list(train.columns) == ["image", "species", "individual_id", "encounter"]
    assert (train.groupby("encounter")["individual_id"].nunique() == 1).all()  # an encounter is one animal's
    sizes = train.groupby("encounter").size()
    assert 1.5 < sizes.mean() < 4.5 and sizes.max() > 1

    def colour(name):  # the photo's median colour: mostly the sea's, under the light of the day
        return np.median(np.asarray(Image.open(tmp_path / "d" / "train_images" / name)).reshape(-1, 3), axis=0)

    train["colour"] = [colour(n) for n in train["image"]]
    within, between = [], []
    for _, photos in train.groupby("individual_id"):
        rows = photos.to_dict("records")
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                d = float(np.abs(rows[a]["colour"] - rows[b]["colour"]).sum())
                (within if rows[a]["encounter"] == rows[b]["encounter"] else between).append(d)
    assert within and between and np.mean(within) < 0.5 * np.mean(between)
    listing = read_source("happywhale", tmp_path / "d", group_col="encounter")
    assert listing.loc[listing["part"] == "train", "group"].str.contains("_e").all()


def test_without_encounters_train_csv_has_no_encounter_column(tmp_path):
    demo.generate(tmp_path / "d", TINY, progress=False)
    assert list(pd.read_csv(tmp_path / "d" / "train.csv").columns) == ["image", "species", "individual_id"]
