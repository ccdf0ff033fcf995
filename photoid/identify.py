"""Answers for new photos with what the pipeline trained: ``photoid identify``.

The same steps and the same code as the pipeline, for photos it has never seen: every photo is
checked as ingest checks it, boxed by the detector the detect stage trained (or given), cropped as
the crop stage crops, described by SIFT as local-features describes, embedded by each fold's
retrained model with the same flips, and ranked against the whole training gallery with
the ranker knn-rank fitted and saved (:class:`photoid.retrieval.ranker.Ranker`: the ranking, the
fusion fitted on its CV queries, the new_individual threshold(s)). So a test photo gets exactly the
answer it has in ``submission.csv``. A photo with the same bytes as a training photo is answered, as
knn-rank answers such a test photo, with that photo's individual at score 1 (``copy_of`` names it).

What it loads, once: the ranker knn-rank saved (``models/ranker``), the folds' models and their
gallery embeddings, the keypoint store, the detector; from the workspace by default, or from the
folder given (a copy of a workspace after ``dvc repro``). The parameters of the steps before
ranking (crop, local) come from that folder's params.yaml.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from photoid import paths
from photoid.data.schema import TEST, TRAIN, UNKNOWN_SPECIES
from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL


@dataclass
class Answers:
    answers: pd.DataFrame  # one row per photo answered
    rejected: pd.DataFrame  # path, reason: every photo that could not be answered


def list_photos(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The files of ``inputs`` (files, and every visible file under folders, as the folders layout
    lists them: what is no photo is rejected later with its reason) and the inputs that give none:
    (path, reason)."""
    from photoid.data.sources import visible_files

    found, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = [str(f) for f in visible_files(p)]
            if not files:
                problems.append((item, "an empty folder (no visible file in it)"))
            found += files
        elif p.exists() or p.is_symlink():
            found.append(item)
        else:
            problems.append((item, "does not exist"))
    return list(dict.fromkeys(found)), problems


class Identifier:
    """The trained pipeline of one workspace, loaded once; :meth:`answer` takes photos."""

    def __init__(self, root: Path = Path("."), progress: bool = True):
        from photoid.crop import crop_side
        from photoid.embed import EmbeddingSet
        from photoid.local_features import KeypointConfig
        from photoid.params import load_params
        from photoid.retrieval.ranker import Ranker

        self.root, self.progress = Path(root), progress
        self._training_hashes: pd.DataFrame | None = None  # sha1, path, individual of the training photos
        ranker = self.root / paths.RANKER_DIR
        if not ranker.exists():
            raise DataError(f"{ranker} does not exist: run the pipeline first (`dvc repro` in {self.root.resolve()}), "
                            "or name a workspace where it ran with --from.")
        self.ranker = Ranker.load(ranker)
        params = load_params(("crop", "train.img_size", "local", "embed.batch_size", "report", "data.min_side"),
                             self.root / "params.yaml")
        self.crop_size, self.crop_margin = crop_side(params), params.float("crop.margin")
        self.crop_fit = params.str("crop.fit")
        self.keypoints = params.build(KeypointConfig, "local")
        self.batch_size = params.int("embed.batch_size")
        self.thumbnail, self.page_size = params.int("report.thumbnail"), params.int("report.page_size")
        self.view = params.int("report.view")
        self.min_side = params.int("data.min_side")
        # each fold's gallery, and the model that embedded it (its meta names it), with the same flips
        self.gallery = [EmbeddingSet.load(self.root / self.ranker.embeddings / f"fold{k}") for k in self.ranker.folds]
        self.models = [self.root / g.meta["model"] for g in self.gallery]
        self.flip = bool(self.gallery[0].meta["flip"])
        for m in self.models:
            if not m.exists():
                raise DataError(f"{m} does not exist: run the pipeline first (`dvc repro`).")
        self.store = self.root / paths.LOCAL_FEATURES
        detector_dir = self.root / paths.DETECT_MODEL_DIR
        config = json.loads((detector_dir / "config.json").read_text())
        from photoid.detect import DetectConfig

        self.detect_cfg = DetectConfig(**config["config"])
        trained = detector_dir / "detector.pt"
        self.detector = trained if trained.exists() else (Path(self.detect_cfg.weights) if self.detect_cfg.weights else None)

    def answer(self, inputs: list[str], html: Path | None = None) -> Answers:
        """Answers for the photos of ``inputs``; with ``html``, also the review page of those answers
        (:mod:`photoid.review`: each photo beside the best gallery photo of each candidate)."""
        from photoid.data.ingest import ingest
        from photoid.data.sources import listing_table

        photos, problems = list_photos(inputs)
        rejected = [dict(path=p, reason=r) for p, r in problems]
        if photos:
            listing = listing_table([dict(image_id=f"query/{i:06d}", path=p, part=TEST, individual="",
                                          species=UNKNOWN_SPECIES, origin="identify", reason="") for i, p in enumerate(photos)])
            images, bad, _, _ = ingest(listing, workers=1, progress=self.progress, min_side=self.min_side)
            rejected += [dict(path=r.path, reason=r.reason) for r in bad.itertuples()]
        else:
            images = pd.DataFrame(columns=["image_id", "path"])
        answers = self._rank(images, html, rejected) if len(images) else pd.DataFrame(columns=ANSWER_COLUMNS)
        return Answers(answers, pd.DataFrame(rejected, columns=["path", "reason"]))

    def _rank(self, images: pd.DataFrame, html: Path | None = None, rejected: list[dict] = ()) -> pd.DataFrame:
        from photoid.crop import crop_all
        from photoid.detect import BOXES_COLUMNS, full_frame_box, predict_boxes
        from photoid.embed import EmbeddingSet, embed_checkpoint
        from photoid.local_features import write_store
        from photoid.retrieval.outputs import answer_copies_certain, predictions_table
        from photoid.retrieval.verification import answer_matches
        from photoid.runtime import pick_device

        r = self.ranker
        with tempfile.TemporaryDirectory(prefix="photoid-identify-") as tmp:
            tmp = Path(tmp)
            if self.detector is not None:
                boxes = predict_boxes(images, self.detector, self.detect_cfg, pick_device())
            else:
                boxes = pd.DataFrame([full_frame_box(x) for x in images.to_dict("records")], columns=BOXES_COLUMNS)
            crops = crop_all(images, boxes, tmp / "crops", size=self.crop_size, margin=self.crop_margin, workers=1,
                             fit=self.crop_fit)
            sets = []
            for k, model, gallery in zip(r.folds, self.models, self.gallery):
                embed_checkpoint(model, crops, tmp / f"emb{k}", self.flip, self.batch_size)
                sets.append(_with_queries(gallery, EmbeddingSet.load(tmp / f"emb{k}")))
            stores = []
            if r.reranker is not None:  # the query photos' keypoints beside the gallery's
                write_store(crops.merge(images[["image_id", "path", "width", "height"]], on="image_id"), tmp / "keypoints",
                            self.keypoints, workers=1, progress=self.progress)
                stores = [self.store, tmp / "keypoints"]
            ranking, p_new = r.answer(sets, stores, progress=self.progress)
            copies = self.copies(images)
            ranking, p_new = answer_copies_certain(ranking, p_new, copies)
            table = predictions_table(ranking, r.thresholds, p_new, copies)
            if html is not None:  # while the query crops and keypoints exist
                matches = None
                if r.reranker is not None:  # why each answer was proposed, drawn on the page
                    matches = answer_matches(ranking, sets[0].rows["image_id"].to_numpy(), stores, r.config.rerank.match,
                                             [p.split(" ") for p in table["predictions"]])
                self._review_page(html, table, sets, crops, images, matches, rejected)
        table = table.merge(images[["image_id", "path"]], on="image_id").merge(
            boxes[["image_id", "x1", "y1", "x2", "y2", "box_source"]], on="image_id")
        rows = []
        for t in table.itertuples():
            top, scores = t.predictions.split(" "), [float(s) for s in t.scores.split(" ")]
            rows.append(dict(image=t.path, predictions=t.predictions,
                             **{f"id{n + 1}": top[n] for n in range(5)},
                             **{f"score{n + 1}": (None if top[n] == NEW_INDIVIDUAL else scores[n]) for n in range(5)},
                             threshold=t.threshold, p_new=getattr(t, "p_new", None), copy_of=t.copy_of,
                             box_x1=t.x1, box_y1=t.y1, box_x2=t.x2, box_y2=t.y2, box_source=t.box_source))
        return pd.DataFrame(rows, columns=ANSWER_COLUMNS)

    def copies(self, images: pd.DataFrame) -> pd.DataFrame:
        """The photos of ``images`` (ingest's table) with the same bytes as a training photo of the
        workspace: image_id, duplicate_of (that training photo's path), individual (its individual)."""
        from photoid.io import read_parquet

        if self._training_hashes is None:  # read once per workspace, not once per batch
            gallery = read_parquet(self.root / paths.IMAGES_TABLE)
            if "sha1" not in gallery.columns:
                raise DataError(f"{self.root / paths.IMAGES_TABLE} was written by an older photoid (no sha1 column): "
                                "run the pipeline again (`dvc repro`) before identifying photos.")
            train = gallery[gallery["part"] == TRAIN].drop_duplicates("sha1")
            self._training_hashes = train[["sha1", "path", "individual"]]
        columns = ["image_id", "duplicate_of", "individual"]
        found = images[["image_id", "sha1"]].merge(self._training_hashes, on="sha1")
        return found.rename(columns={"path": "duplicate_of"})[columns].reset_index(drop=True)


    def _review_page(self, out: Path, table: pd.DataFrame, sets, crops: pd.DataFrame, images: pd.DataFrame,
                     matches: pd.DataFrame | None, rejected: list[dict]) -> dict:
        """The review page of these answers, each photo named by its path (what the page exports), the
        photos that could not be answered listed with their reason."""
        from photoid.io import read_parquet
        from photoid.review import best_photos, review_rows, view_sources, write_review_page

        photos = best_photos(sets, self.ranker.config.flips, table["image_id"].tolist(),
                             [p.split(" ") for p in table["predictions"]])
        path_of = dict(zip(images["image_id"], images["path"]))
        gallery_crops = read_parquet(self.root / paths.CROPS_TABLE)
        crop_paths = {i: str(self.root / c) for i, c in zip(gallery_crops["image_id"], gallery_crops["crop_path"])}
        crop_paths.update({path_of[i]: c for i, c in zip(crops["image_id"], crops["crop_path"])})
        gallery_images = read_parquet(self.root / paths.IMAGES_TABLE)
        views = view_sources(gallery_images.assign(path=[str(self.root / p) for p in gallery_images["path"]]), gallery_crops)
        views.update({path_of[i]: v for i, v in view_sources(images, crops).items()})
        if matches is not None:
            matches = matches.assign(image_id=matches["image_id"].map(path_of))
        rows_all = sets[0].rows
        gallery = set(rows_all.loc[rows_all["part"] == TRAIN, "individual"])
        rows = review_rows(table.assign(image_id=table["image_id"].map(path_of)), photos, None, gallery, matches)
        return write_review_page(out, rows, crop_paths, self.thumbnail, self.page_size, title="photoid identify",
                                 views=views, view_side=self.view,
                                 unanswered=[{"photo": r["path"], "reason": r["reason"]} for r in rejected])


ANSWER_COLUMNS = ["image", "predictions", *[f"id{n}" for n in range(1, 6)], *[f"score{n}" for n in range(1, 6)],
                  "threshold", "p_new", "copy_of", "box_x1", "box_y1", "box_x2", "box_y2", "box_source"]


def _with_queries(gallery, queries):
    """An embedding set of the gallery's training rows followed by the query rows (as test rows)."""
    from photoid.embed import EmbeddingSet

    keep = np.flatnonzero((gallery.rows["part"] == TRAIN).to_numpy())
    rows = pd.concat([gallery.rows.iloc[keep], queries.rows.assign(part=TEST)], ignore_index=True)
    original = np.concatenate([np.asarray(gallery.original[keep]), np.asarray(queries.original)])
    flipped = None
    if gallery.flipped is not None and queries.flipped is not None:
        flipped = np.concatenate([np.asarray(gallery.flipped[keep]), np.asarray(queries.flipped)])
    return EmbeddingSet(rows, original, flipped, gallery.meta)


def write_answers(answers: pd.DataFrame, out: Path) -> None:
    """CSV, or parquet when ``out`` ends in .parquet."""
    from photoid.io import atomic_path

    with atomic_path(out) as tmp:
        if str(out).endswith(".parquet"):
            answers.to_parquet(tmp, index=False)
        else:
            answers.to_csv(tmp, index=False)


