"""Local evidence one stage computed, kept for the next stage to read instead of computing it again.

pseudo-label fits the same ranker knn-rank fits: the same CV folds' queries against the same
catalogues, the test photos against every training photo. Where retrain keeps its starting weights
(as it does whenever no pseudo-label improves a fold), knn-rank's CV shortlists are pseudo-label's,
and whatever the embeddings, the LNBNN scores of a query over a catalogue do not depend on them at
all. So pseudo-label writes its evidence to a memo (``data/processed/local_evidence``): the RANSAC
inlier count of every (query, gallery photo) pair it verified, and the LNBNN scores of each
catalogue's queries over its individuals. knn-rank reads it when it was made from the same keypoint
stores with the same settings (:func:`evidence_key`), and computes only what it lacks; its answers are
the same either way, to the bit.
"""

from __future__ import annotations

import hashlib
import json
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.io import atomic_path, file_digest, read_parquet, write_json, write_parquet

STORE_FILES = ("index.parquet", "frames.npy", "descriptors.npy")  # what a keypoint store's evidence depends on


MAX_SCORES = 20_000_000  # LNBNN scores (queries x individuals) a memo keeps at most (80 MB): a larger catalogue's are not kept


def evidence_key(store_dirs, match, catalogue) -> str:
    """What a memo's evidence was computed from: the keypoint stores' files (their SHA-256) and the
    matching and catalogue settings."""
    dirs = [store_dirs] if isinstance(store_dirs, (str, Path)) else list(store_dirs)
    files = [Path(d) / name for d in dirs for name in STORE_FILES]  # a missing one: the matching says so, later
    parts = [file_digest(f) if f.exists() else f"missing {f}" for f in files] + [repr(match), repr(catalogue)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def catalogue_key(gallery_ids, gallery_individuals) -> str:
    """A catalogue: its gallery photos and their individuals, in order."""
    text = "\n".join(f"{g}\t{i}" for g, i in zip(gallery_ids, gallery_individuals))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class EvidenceMemo:
    """Local evidence computed for one keypoint store and settings (``key``: :func:`evidence_key`):
    ``pairs``: RANSAC inlier counts by (query image_id, gallery image_id); ``catalogues``: by
    :func:`catalogue_key`, the individuals (columns) and each query's LNBNN scores over them."""

    key: str
    pairs: dict = field(default_factory=dict)
    catalogues: dict = field(default_factory=dict)  # catalogue key -> (individuals, {query image_id: scores})

    def scores(self, catalogue: str, queries) -> tuple[np.ndarray, np.ndarray] | None:
        """(individuals, Q×I scores) of ``queries`` over a catalogue, or None unless every one is held."""
        held = self.catalogues.get(catalogue)
        if held is None or any(q not in held[1] for q in queries):
            return None
        individuals, rows = held
        return individuals, np.stack([rows[q] for q in queries]) if len(queries) else np.zeros((0, len(individuals)))

    def keep_scores(self, catalogue: str, individuals: np.ndarray, queries, matrix: np.ndarray) -> None:
        """Keep the LNBNN scores of ``queries`` (rows of ``matrix``) over a catalogue, while the memo
        holds fewer than MAX_SCORES."""
        held = self.catalogues.setdefault(catalogue, (np.asarray(individuals), {}))
        if not np.array_equal(held[0], individuals):
            raise ValueError("a catalogue's individuals changed within one memo")
        if sum(len(r) * len(i) for i, r in self.catalogues.values()) + matrix.size > MAX_SCORES:
            return
        held[1].update(zip(queries, np.asarray(matrix, np.float32)))

    def verified(self, counts: dict) -> ChainMap:
        """Pair counts to take as verified: ``counts`` first, then the memo's."""
        return ChainMap(counts, self.pairs)

    def save(self, folder: Path) -> None:
        """``folder``/meta.json, pairs.parquet and catalogue<i>/ (individuals.npy, queries.npy, scores.npy),
        written whole or not at all, the same bytes for the same evidence."""
        with atomic_path(Path(folder)) as tmp:
            tmp.mkdir(parents=True)
            write_parquet(pd.DataFrame([(q, g, int(n)) for (q, g), n in self.pairs.items()],
                                       columns=["query", "gallery", "inliers"]), tmp / "pairs.parquet")
            names = {}
            for i, (catalogue, (individuals, rows)) in enumerate(self.catalogues.items()):
                queries = list(rows)
                part = tmp / f"catalogue{i}"
                part.mkdir()
                np.save(part / "individuals.npy", np.asarray(individuals, dtype=str))
                np.save(part / "queries.npy", np.asarray(queries, dtype=str))
                np.save(part / "scores.npy", np.stack([rows[q] for q in queries]) if queries
                        else np.zeros((0, len(individuals)), np.float32))
                names[catalogue] = part.name
            write_json({"key": self.key, "pairs": len(self.pairs), "catalogues": names}, tmp / "meta.json")

    @classmethod
    def load(cls, folder: Path, key: str) -> "EvidenceMemo":
        """The memo in ``folder`` when it was made with ``key``; else an empty one (said in one line)."""
        folder = Path(folder)
        if not (folder / "meta.json").exists():
            return cls(key)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key:
            print(f"{folder}: local evidence of other keypoints or settings, not reused")
            return cls(key)
        pairs = read_parquet(folder / "pairs.parquet")
        memo = cls(key, {(q, g): int(n) for q, g, n in pairs[["query", "gallery", "inliers"]].itertuples(index=False)})
        for catalogue, name in meta["catalogues"].items():
            part = folder / name
            individuals = np.load(part / "individuals.npy").astype(object)
            memo.catalogues[catalogue] = (individuals, dict(zip(np.load(part / "queries.npy").tolist(),
                                                                np.load(part / "scores.npy"))))
        return memo
