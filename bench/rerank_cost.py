"""What local-feature re-ranking costs: pairs verified per second, seconds per 1,000 queries, and how
that grows with the shortlist (rerank.candidates).

    python bench/rerank_cost.py                                  # the demo's keypoint store, after `dvc repro`
    python bench/rerank_cost.py --store data/processed/local_features --queries 40 --workers 2

A pair is one query crop against one gallery crop, verified twice (the query as it is and
mirrored): ratio-test matching of RootSIFT descriptors, then RANSAC. Each query is verified against
``candidates`` x ``photos`` gallery crops, as knn-rank does. Queries and gallery crops are drawn at
random from the store (seeded), so the figures do not depend on what the embedding would shortlist.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer

from photoid import paths
from photoid.local_features import KeypointStore, MatchConfig
from photoid.params import PARAMS_FILE, load_params
from photoid.retrieval.verification import verify_pairs


def main(
    store: Path = typer.Option(paths.LOCAL_FEATURES, help="A keypoint store (the local-features stage's output)."),
    queries: int = typer.Option(30, help="Queries timed per shortlist length."),
    candidates: str = typer.Option("5,10,20,40", help="Shortlist lengths to time."),
    photos: int = typer.Option(3, help="Gallery photos verified per candidate."),
    workers: int = typer.Option(2, help="Processes verifying pairs."),
    seed: int = typer.Option(0, help="Which queries and gallery photos are drawn."),
    params_file: Path = typer.Option(PARAMS_FILE, "--params", help="Where the matching settings (rerank.ratio ...) come from."),
):
    match = load_params(("rerank",), params_file).build(MatchConfig, "rerank")
    keypoints = KeypointStore(store)
    ids = sorted({i for i, flipped in keypoints._where if not flipped})
    per_crop = np.mean([len(keypoints.get(i).frames) for i in ids])
    rng = np.random.default_rng(seed)
    print(f"store {store}: {len(ids)} crops, {per_crop:.0f} keypoints per crop; {workers} worker(s), "
          f"{photos} photos per candidate")
    print(f"{'candidates':>10} {'pairs':>7} {'seconds':>8} {'pairs/s':>8} {'s per 1,000 queries':>20}")
    verify_pairs([(ids[0], ids[1])], store, match, 1, progress=False)  # imports and first-call costs
    timed = []
    for c in (int(v) for v in candidates.split(",")):
        pairs = []
        for q in rng.choice(len(ids), size=queries, replace=len(ids) < queries):
            others = [g for g in rng.choice(len(ids), size=min(len(ids), c * photos + 1), replace=False) if g != q]
            pairs += [(ids[q], ids[g]) for g in others[: c * photos]]
        start = time.perf_counter()
        verify_pairs(pairs, store, match, workers, progress=False)
        seconds = time.perf_counter() - start
        rate = len(pairs) / seconds
        print(f"{c:>10} {len(pairs):>7} {seconds:>8.2f} {rate:>8.0f} {1000 * c * photos / rate:>20.0f}")
        timed.append((len(pairs), seconds))
    if len(timed) >= 2 and timed[-1][1] > timed[-2][1]:
        marginal = (timed[-1][0] - timed[-2][0]) / (timed[-1][1] - timed[-2][1])
        print(f"marginal rate between the two longest shortlists (pool start-up excluded): {marginal:.0f} pairs/s, "
              f"{1000 * 20 * photos / marginal:.0f} s per 1,000 queries at 20 candidates")
    print("seconds per 1,000 queries = 1,000 x candidates x photos / pairs per second (pool start-up included in each row)")


if __name__ == "__main__":
    typer.run(main)
