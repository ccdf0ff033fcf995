"""The same photo twice: exact copies (the same bytes under other names) and near copies (re-encoded,
resized, lightly edited: a few bits apart in a 256-bit difference hash, :func:`photoid.images.difference_hash`).

A photo in both the training and the test part is a leak that inflates every figure: the test
copy is answered by looking itself up. Within the training part, copies put the same picture on
both sides of a CV split; copies labelled with two individuals are a labelling error. Ingest
reports every pair in ``duplicates.parquet`` and counts them in ``metrics/ingest.json``;
``data.duplicates: reject`` rejects the test copy of an exact train/test pair.

A 256-bit difference hash keeps copies (re-encoded, resized to a quarter) within 18 bits on the
marine sample's real photos, where distinct photos are 57 bits apart or more; the demo's generated
sea photos, alike by design, stay 46 bits apart or more (``data.near_duplicate_bits``: 24).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from photoid.data.schema import TEST, TRAIN

DUPLICATE_COLUMNS = ["image_id", "duplicate_of", "kind", "bits", "part", "other_part", "individual", "other_individual"]
EXACT, NEAR = "exact", "near"


def near_pairs(hashes: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of hashes (rows of uint8, :func:`photoid.images.difference_hash`) at most
    ``max_bits`` apart, and their distances: faiss's exact binary range search (80,000 hashes of 256
    bits against each other take seconds on a CPU)."""
    import faiss

    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    empty = np.zeros(0, np.int64)
    if len(hashes) < 2 or max_bits < 0:
        return empty, empty, empty
    index = faiss.IndexBinaryFlat(hashes.shape[1] * 8)
    index.add(hashes)
    limits, distances, found = index.range_search(hashes, max_bits + 1)  # distances < radius
    queries = np.repeat(np.arange(len(hashes)), np.diff(limits.astype(np.int64)))
    keep = queries < found
    return queries[keep].astype(np.int64), found[keep].astype(np.int64), distances[keep].astype(np.int64)


def find_duplicates(images: pd.DataFrame, near_bits: int) -> pd.DataFrame:
    """Pairs of usable images that are copies of each other: ``images`` has image_id, part,
    individual, sha1 and dhash. An exact copy is paired with the first of its group (training photos
    first); near copies (dHash at most ``near_bits`` apart, ``near_bits < 0``: none) pair with each other."""
    images = images.assign(_train_first=(images["part"] != TRAIN)).sort_values(["_train_first", "image_id"],
                                                                               kind="stable").reset_index(drop=True)
    rows = []
    for _, group in images.groupby("sha1", sort=False):
        if len(group) < 2:
            continue
        first = group.iloc[0]
        for r in group.iloc[1:].itertuples():
            rows.append((r.image_id, first.image_id, EXACT, 0, r.part, first.part, r.individual, first.individual))
    if near_bits >= 0:
        i, j, bits = near_pairs(np.stack([np.frombuffer(bytes.fromhex(h), np.uint8) for h in images["dhash"]])
                                if len(images) else np.zeros((0, 32), np.uint8), near_bits)
        sha = images["sha1"].to_numpy()
        for a, b, d in zip(i, j, bits):
            if sha[a] == sha[b]:
                continue  # exact: listed above
            x, y = images.iloc[b], images.iloc[a]  # y (train first) is the one kept as "duplicate_of"
            rows.append((x.image_id, y.image_id, NEAR, int(d), x.part, y.part, x.individual, y.individual))
    return pd.DataFrame(rows, columns=DUPLICATE_COLUMNS).astype({"bits": np.int64})


def duplicate_counts(pairs: pd.DataFrame) -> dict:
    """The figures metrics/ingest.json reports: pairs by kind and by the parts they join, and exact
    training copies labelled as two individuals."""
    parts = pairs["part"].where(pairs["part"] == pairs["other_part"], "train_test")
    parts = parts.replace({TRAIN: "within_train", TEST: "within_test"})
    counts = {f"{kind}_{where}": int(((pairs["kind"] == kind) & (parts == where)).sum())
              for kind in (EXACT, NEAR) for where in ("train_test", "within_train", "within_test")}
    both_train = (pairs["part"] == TRAIN) & (pairs["other_part"] == TRAIN)
    counts["exact_with_two_individuals"] = int(((pairs["kind"] == EXACT) & both_train
                                                & (pairs["individual"] != pairs["other_individual"])).sum())
    return counts


def exact_copies(duplicates: pd.DataFrame | None) -> pd.DataFrame:
    """The test photos that are exact copies of a training photo (image_id, duplicate_of, individual: the
    training photo's), from ingest's duplicates table (:func:`find_duplicates`)."""
    columns = ["image_id", "duplicate_of", "individual"]
    if duplicates is None or duplicates.empty:
        return pd.DataFrame(columns=columns)
    exact = duplicates[(duplicates["kind"] == EXACT) & (duplicates["part"] == TEST) & (duplicates["other_part"] == TRAIN)]
    return exact.rename(columns={"individual": "_own", "other_individual": "individual"})[columns].reset_index(drop=True)
