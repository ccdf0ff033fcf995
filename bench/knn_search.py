"""Top-k cosine search, side by side in one run: faiss IndexFlatIP (what knn-rank uses by default),
scikit-learn NearestNeighbors (brute, cosine), numpy matmul + argpartition, torch matmul + topk, and
the approximate faiss IVF index of ``knn.index: ivf`` (photoid.retrieval, its lists trained in the
timed call) at a few ``knn.ivf_probe`` values; faiss on the GPU and torch on CUDA too when there is a
GPU (and faiss-gpu is installed).

    python bench/knn_search.py --gallery 100000 --queries 10000 --dim 512 --k 100

The vectors are clustered like embeddings of individuals (``--individuals`` centres, a few images
each, noise around them), L2-normalised float32. Each method is timed from raw arrays to (Q×k
indices, similarities), index building included, and checked against faiss on the CPU: the share of
queries whose top-k index set is identical and the largest difference of the k-th similarity (sets
differ only where two gallery vectors tie at the k-th place to float rounding), and recall@5: the
share of the exact five best found among a method's five best (what an approximate index loses).
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import typer

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def _data(n_gallery: int, n_queries: int, dim: int, individuals: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((individuals, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def around(n):
        x = centres[rng.integers(0, individuals, n)] + 0.6 / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return around(n_gallery), around(n_queries)


def faiss_search(gallery, queries, k, gpu=False):
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(gallery)
    sims, idx = index.search(queries, k)
    return idx, sims


def ivf_search(gallery, queries, k, probe):
    from photoid.retrieval.search import Search, neighbours

    sims, idx = neighbours(queries, gallery, Search(k, "ivf", 0, probe, 0.0))
    return idx, sims


def sklearn_search(gallery, queries, k):
    from sklearn.neighbors import NearestNeighbors

    # joblib's workers warn about sklearn's own `delayed`: noise, not ours; they inherit the environment
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"
    warnings.filterwarnings("ignore", message=".*sklearn.utils.parallel.delayed.*")
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine", n_jobs=-1).fit(gallery)
    dist, idx = nn.kneighbors(queries)
    return idx, 1.0 - dist


def numpy_search(gallery, queries, k, chunk=1024):
    idx_out, sim_out = [], []
    for a in range(0, len(queries), chunk):
        sims = queries[a:a + chunk] @ gallery.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        psims = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-psims, axis=1)
        idx_out.append(np.take_along_axis(part, order, axis=1))
        sim_out.append(np.take_along_axis(psims, order, axis=1))
    return np.concatenate(idx_out), np.concatenate(sim_out)


def torch_search(gallery, queries, k, device="cpu", chunk=1024):
    import torch

    g = torch.from_numpy(gallery).to(device)
    idx_out, sim_out = [], []
    for a in range(0, len(queries), chunk):
        q = torch.from_numpy(queries[a:a + chunk]).to(device)
        sims, idx = torch.topk(q @ g.T, k, dim=1)
        idx_out.append(idx.cpu().numpy())
        sim_out.append(sims.cpu().numpy())
    if device == "cuda":
        torch.cuda.synchronize()
    return np.concatenate(idx_out), np.concatenate(sim_out)


@app.command()
def main(
    gallery: int = typer.Option(100_000, help="Gallery vectors."),
    queries: int = typer.Option(10_000, help="Query vectors."),
    dim: int = typer.Option(512, help="Dimension."),
    k: int = typer.Option(100, help="Neighbours per query."),
    individuals: int = typer.Option(15_000, help="Cluster centres the vectors are drawn around."),
    seed: int = typer.Option(0, help="Random seed."),
    skip: str = typer.Option("", help="Methods to leave out, comma-separated (faiss, sklearn, numpy, torch, ivf)."),
    probes: str = typer.Option("8,32,128", help="knn.ivf_probe values to time the IVF index at."),
):
    import faiss
    import torch

    g, q = _data(gallery, queries, dim, individuals, seed)
    print(f"gallery {gallery} x {dim}, {queries} queries, k={k}, float32; "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    methods = {"faiss IndexFlatIP (cpu)": lambda: faiss_search(g, q, k),
               "sklearn NearestNeighbors brute cosine": lambda: sklearn_search(g, q, k),
               "numpy matmul + argpartition": lambda: numpy_search(g, q, k),
               "torch matmul + topk (cpu)": lambda: torch_search(g, q, k)}
    lists = int(4 * np.sqrt(gallery))
    for p in [int(x) for x in probes.split(",") if x.strip()]:
        methods[f"ivf {lists} lists, probe {p} (photoid)"] = lambda p=p: ivf_search(g, q, k, p)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        methods["faiss IndexFlatIP (gpu)"] = lambda: faiss_search(g, q, k, gpu=True)
    if torch.cuda.is_available():
        methods["torch matmul + topk (cuda)"] = lambda: torch_search(g, q, k, "cuda")
    skipped = {s.strip() for s in skip.split(",") if s.strip()}
    reference = None
    rows = []
    for name, fn in methods.items():
        if name.split()[0] in skipped:
            continue
        t0 = time.perf_counter()
        idx, sims = fn()
        seconds = time.perf_counter() - t0
        if reference is None:
            reference = (idx, sims)
        same = np.mean([set(a) == set(b) for a, b in zip(idx, reference[0])])
        recall5 = np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(idx, reference[0])])
        kth = float(np.abs(np.asarray(sims)[:, -1] - reference[1][:, -1]).max())
        rows.append((name, seconds, same, kth))
        print(f"  {name:40s} {seconds:8.2f} s  {queries / seconds:9.0f} queries/s  "
              f"top-k equal {100 * same:6.2f}%  recall@5 {recall5:.4f}  max |k-th sim diff| {kth:.1e}", flush=True)
    base = rows[0][1]
    print("time relative to faiss (cpu): " + ", ".join(f"{name} {s / base:.2f}x" for name, s, _, _ in rows[1:]))


if __name__ == "__main__":
    app()
