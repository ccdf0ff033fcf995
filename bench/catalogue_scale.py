"""How catalogue-wide local matching (photoid.retrieval.catalogue) grows with the gallery: index build
time, seconds per query, the time for a Happywhale-sized test set, and peak memory.

    python bench/catalogue_scale.py [--sizes 1000,10000,50000] [--keypoints 500] [--queries 200]

Each gallery size runs in a process of its own (its peak memory is that size's alone), on generated
RootSIFT-like descriptors (uint8, as the keypoint store keeps them, in a memory-mapped file as the
store is: ``--keypoints`` per photo and as many again for its mirror image, three photos an
individual); the queries are gallery photos' keypoints with noise. Peak memory is the process's
own (anonymous) memory at its highest, sampled every 50 ms: the memory-mapped store's pages are the
kernel's page cache, read as needed, and its size on disk is given beside it. With the params.yaml
settings of rerank.lnbnn_k, rerank.lnbnn_pool, rerank.ivf_above and rerank.ivf_probe. The time for
``--test-queries`` queries (Happywhale's test set: 27,956) is the measured seconds per query times
that count, on the same cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class GeneratedStore:
    """A keypoint store's read side over generated descriptors in a memory-mapped file (photo i: rows
    2ik ... as it is, then its mirror image)."""

    def __init__(self, photos: int, keypoints: int, folder: Path, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.k = keypoints
        rows = photos * 2 * keypoints
        self.descriptors = np.lib.format.open_memmap(folder / "descriptors.npy", "w+", np.uint8, (rows, 128))
        for start in range(0, rows, 1 << 18):  # generated in chunks: never the gallery as float32
            raw = np.abs(rng.standard_normal((min(1 << 18, rows - start), 128), dtype=np.float32)) ** 2
            raw /= np.linalg.norm(raw, axis=1, keepdims=True)
            self.descriptors[start:start + len(raw)] = np.round(raw * 255)
        self.descriptors.flush()
        self.descriptors = np.load(folder / "descriptors.npy", mmap_mode="r")  # read-only, as the store opens it
        self.bytes = rows * 128

    def descriptor_slice(self, image_id, flipped=False):
        return self.descriptors, (2 * int(image_id) + int(flipped)) * self.k, self.k

    def get(self, image_id, flipped=False):
        from photoid.local_features import Keypoints

        array, start, n = self.descriptor_slice(image_id, flipped)
        d = np.asarray(array[start:start + n])
        return Keypoints(np.zeros((len(d), 4), np.float32), d)


class PeakMemory:
    """The highest anonymous resident memory (RssAnon) of this process, sampled in a thread."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(0.05)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1e9


def one_size(photos: int, keypoints: int, queries: int) -> dict:
    from photoid.params import load_params
    from photoid.retrieval.catalogue import CatalogueConfig, CatalogueIndex

    cfg = load_params(("rerank",), REPO / "params.yaml").build(CatalogueConfig, "rerank")
    folder = tempfile.TemporaryDirectory(prefix="catalogue-scale-")
    store = GeneratedStore(photos, keypoints, Path(folder.name))
    memory = PeakMemory()
    start = time.perf_counter()
    index = CatalogueIndex(store, list(range(photos)), [i // 3 for i in range(photos)], cfg)
    build = time.perf_counter() - start
    rng = np.random.default_rng(1)
    picked = rng.choice(photos, size=min(queries, photos), replace=False)
    noisy = []
    for p in picked:
        d = store.get(p).descriptors.astype(np.int16) + rng.integers(-8, 9, size=(keypoints, 128))
        noisy.append(np.clip(d, 0, 255).astype(np.uint8))
    start = time.perf_counter()
    scores = index.scores(noisy)
    seconds = time.perf_counter() - start
    found = float(np.mean(np.argmax(scores, axis=1) == picked // 3))
    peak = memory.stop()
    folder.cleanup()
    return {"gallery_photos": photos, "gallery_keypoints": index.size, "approximate": index.approximate,
            "build_seconds": build, "seconds_per_query": seconds / len(picked), "right_individual_first": found,
            "peak_memory_gb": peak, "store_gb": store.bytes / 1e9}


def main(
    sizes: str = typer.Option("1000,10000,50000", help="Gallery sizes (photos), comma-separated."),
    keypoints: int = typer.Option(500, help="Keypoints per photo (local.max_keypoints), each also mirrored."),
    queries: int = typer.Option(200, help="Queries timed per size."),
    test_queries: int = typer.Option(27956, help="The test set the time is given for (Happywhale's)."),
    child: int = typer.Option(0, hidden=True),
):
    if child:
        print(json.dumps(one_size(child, keypoints, queries)))
        return
    print("| gallery photos | gallery keypoints | index | build (s) | s per query | hours for "
          f"{test_queries:,} queries | peak memory (GB) | store on disk (GB) | right individual first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in sizes.split(",")]:
        done = subprocess.run([sys.executable, __file__, "--child", str(n), "--keypoints", str(keypoints),
                               "--queries", str(queries)], capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            print(f"| {n:,} | – | – | – | – | – | – | – | failed: {reason} (exit {done.returncode}) |", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {n:,} | {r['gallery_keypoints']:,} | {'IVF-PQ, re-measured' if r['approximate'] else 'exact'} | "
              f"{r['build_seconds']:.1f} | {r['seconds_per_query']:.3f} | "
              f"{r['seconds_per_query'] * test_queries / 3600:.1f} | {r['peak_memory_gb']:.2f} | {r['store_gb']:.1f} | "
              f"{r['right_individual_first']:.2f} |", flush=True)


if __name__ == "__main__":
    typer.run(main)
