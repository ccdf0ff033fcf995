"""Where every artifact of the pipeline lives, in one place.

dvc.yaml names the same paths; the stage scripts take them as options whose defaults come from
here, so a script run by hand writes where DVC expects it.
"""

import os
from dataclasses import dataclass
from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
INTERIM = DATA / "interim"
PROCESSED = DATA / "processed"
MODELS = Path("models")
METRICS = Path("metrics")

# ingest
INGEST_DIR = INTERIM / "ingest"
IMAGES_TABLE = INGEST_DIR / "images.parquet"  # the canonical table, see photoid.data.schema
REJECTED_TABLE = INGEST_DIR / "rejected.parquet"
TEST_TRUTH_TABLE = INGEST_DIR / "test_truth.parquet"  # only evaluation reads it
DEMO_DIR = INGEST_DIR / "demo"  # the generated demo data set (Happywhale layout)

# detect
DETECT_MODEL_DIR = MODELS / "detector"
BOXES_TABLE = INTERIM / "boxes.parquet"

# crop
CROPS_DIR = PROCESSED / "crops"

# local-features: SIFT keypoints of every crop (see photoid.local_features)
LOCAL_FEATURES = PROCESSED / "local_features"

# filter, split
FILTERED_TABLE = PROCESSED / "filtered.parquet"
FILTERED_OUT_TABLE = PROCESSED / "filtered_out.parquet"
SPLIT_TABLE = PROCESSED / "split.parquet"

# training: resume state lives outside DVC outputs (DVC clears outputs before a stage runs)
CHECKPOINTS = Path("checkpoints")
# training: the crops decoded at the training size, memory-mapped (photoid.crop_cache); a cache, not an
# output. $PHOTOID_CACHE puts it elsewhere (<that>/crops): a fast local disk, or one cache that queued
# experiments share (each runs in its own copy of the project)
CROP_CACHE = Path("cache") / "crops"
CACHE_ENV = "PHOTOID_CACHE"

# embed, retrain: one embedding set per fold (see photoid.embed)
CROPS_TABLE = CROPS_DIR / "crops.parquet"
EMBEDDINGS = PROCESSED / "embeddings"  # dolg/fold<k> (embed), retrain/fold<k> (retrain)

# pseudo-label, knn-rank
PSEUDO_TABLE = PROCESSED / "pseudo_labels.parquet"
LOCAL_EVIDENCE = PROCESSED / "local_evidence"  # pseudo-label's local evidence, read by knn-rank (retrieval.evidence_memo)
PREDICTIONS_TABLE = PROCESSED / "predictions.parquet"
MATCHES_TABLE = PROCESSED / "matches.parquet"  # knn-rank: the verified matches behind each test photo's answers
SUBMISSION = PROCESSED / "submission.csv"
RANKER_DIR = MODELS / "ranker"  # knn-rank: what it fitted and chose (thresholds, fusion), for photoid identify
PLOTS = METRICS / "plots"  # knn-rank: the tables of its plots (dvc.yaml's plots section)
RELIABILITY = METRICS / "reliability"  # knn-rank: reliability diagram of P(new individual), cv.csv and test.csv
REVIEW_PAGE = Path("reports") / "review.html"  # report: the review page of knn-rank's answers


@dataclass(frozen=True)
class FoldOutputs:
    """Where a per-fold stage (``backbone``, ``dolg``, ``embed`` or ``retrain``) writes for fold k, as
    dvc.yaml names it: ``FoldOutputs("dolg", 0).model_dir`` is models/dolg/fold0; each path is
    ``<root>/<stage>/fold<k>`` under its folder. ``project`` puts the whole layout under another
    folder (a stage's ``--outputs``: a run by hand beside DVC's outputs, a test's temporary folder)."""

    stage: str
    fold: int | str  # a fold number, or "all"
    project: Path = Path(".")

    def under(self, root: Path) -> Path:
        return self.project / root / self.stage / f"fold{self.fold}"

    model_dir = property(lambda self: self.under(MODELS))
    metrics = property(lambda self: self.under(METRICS).with_suffix(".json"))
    curves = property(lambda self: self.under(METRICS / "curves"))
    state_dir = property(lambda self: self.under(CHECKPOINTS))
    embeddings = property(lambda self: self.under(EMBEDDINGS))

    @property
    def crop_cache(self) -> Path:
        """Where the crop cache lives (shared by every stage and fold): $PHOTOID_CACHE/crops, else the project's."""
        shared = os.environ.get(CACHE_ENV)
        return Path(shared) / "crops" if shared else self.project / CROP_CACHE
