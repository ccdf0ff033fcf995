"""The same photo twice: exact copies (the same bytes under other names) and near copies (re-encoded,
resized, lightly edited: a few bits apart in a 64-bit difference hash, :func:`photoid.images.difference_hash`).

A photo in both the training and the test part is a leak that inflates every figure: the test
copy is answered by looking itself up. Within the training part, copies put the same picture on
both sides of a CV split; copies labelled with two individuals are a labelling error. Ingest
reports every pair in ``duplicates.parquet`` and counts them in ``metrics/ingest.json``;
``data.duplicates: reject`` rejects the test copy of an exact train/test pair.

Near copies are found without comparing every pair: a 64-bit hash cut into ``bits + 1`` bands has,
for any two hashes at most ``bits`` apart, one band where they agree (the pigeonhole principle), so
only hashes sharing a band value are compared.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from photoid.data.schema import TEST, TRAIN

DUPLICATE_COLUMNS = ["image_id", "duplicate_of", "kind", "bits", "part", "other_part", "individual", "other_individual"]
EXACT, NEAR = "exact", "near"


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    x = x.astype(np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64)


def near_pairs(hashes: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of 64-bit hashes at most ``max_bits`` apart, and their distances."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2 or max_bits < 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    bands = max_bits + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    found: set[tuple[int, int]] = set()
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = np.uint64(((1 << (hi - lo)) - 1) << lo)
        keys = hashes & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends):
            if e - s < 2:
                continue
            members = np.sort(order[s:e])
            for a, b in _pairs_within(len(members)):
                close = popcount(hashes[members[a]] ^ hashes[members[b]]) <= max_bits
                found.update(zip(members[a][close].tolist(), members[b][close].tolist()))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = (np.array(v, dtype=np.int64) for v in zip(*sorted(found)))
    return i, j, popcount(hashes[i] ^ hashes[j])


def _pairs_within(m: int, block: int = 1 << 21):
    """Index pairs (a < b) of ``m`` items, in chunks of at most about ``block`` pairs (a large bucket of
    alike hashes, e.g. plain sea, must not hold every pair at once)."""
    if m * (m - 1) // 2 <= block:
        yield np.triu_indices(m, k=1)
        return
    rows_per_chunk = max(1, block // m)
    for start in range(0, m - 1, rows_per_chunk):
        a = np.concatenate([np.full(m - r - 1, r) for r in range(start, min(start + rows_per_chunk, m - 1))])
        b = np.concatenate([np.arange(r + 1, m) for r in range(start, min(start + rows_per_chunk, m - 1))])
        yield a, b


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
        i, j, bits = near_pairs(images["dhash"].to_numpy(dtype=np.uint64), near_bits)
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
