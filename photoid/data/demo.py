"""The built-in demo data set: synthetic sea-surface photos of dorsal fins, deterministic per seed.

Each individual has a fin whose shape follows its species (falcate dolphin fins, tall erect orca
fins) and persistent markings of its own: notches cut into the trailing edge, pale scars and
pigment patches. Every photo of it re-draws that same fin under a new pose (mirrored side, tilt,
foreshortening), scale, place in the frame, sea state, light, blur, spray and wave cover, so that
telling individuals apart takes a model that reads the markings, not the scene.

The set is written in the Happywhale layout (``train.csv``, ``train_images/``, ``test_images/``)
plus ``boxes.csv`` (the fin box of every image) and ``test_truth.csv``, and ingest reads it with
the same reader as real Happywhale data. Test photos show known individuals and individuals that
never appear in training.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

SPECIES = ("bottlenose_dolphin", "killer_whale")
TEXTURE = 192  # fin texture resolution (pixels per fin-base length)


@dataclass(frozen=True)
class DemoConfig:
    """params.yaml's data.demo (the values live there)."""

    seed: int
    individuals: int  # known individuals, with training photos
    new_individuals: int  # individuals seen only in test photos
    mean_images: float  # mean training photos per known individual; uneven, many have 1-3
    test_known_fraction: float  # share of known individuals with one test photo
    test_per_new: int  # test photos of each new individual
    width: int
    height: int
    # mean training photos per encounter: those of one encounter share the sea, the light and the side
    # of the animal, as burst photos do; train.csv then has an encounter column (data.group_col=encounter
    # keeps each encounter in one fold). 1: every photo an encounter of its own, no column
    photos_per_encounter: float


@dataclass
class Fin:
    """One individual's fin, in fin coordinates: base from x=0 to x=1 at y=0, y up."""

    species: str
    height: float
    tip_x: float
    trailing_base: float
    lead_bulge: float
    trail_sag: float
    color: tuple[int, int, int]
    notches: list[tuple[float, float, float]] = field(default_factory=list)  # (position, depth, width) on trailing edge
    scars: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1, width
    patches: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # cx, cy, rx, ry, tone


def make_fin(rng: np.random.Generator, species: str) -> Fin:
    if species == "bottlenose_dolphin":  # falcate: swept back, tip beyond the trailing base
        shape = dict(height=rng.uniform(0.55, 0.8), tip_x=rng.uniform(0.9, 1.2), trailing_base=rng.uniform(0.8, 0.95),
                     lead_bulge=rng.uniform(0.05, 0.15), trail_sag=rng.uniform(0.12, 0.25))
        grey = int(rng.integers(70, 120))
        color = (grey, grey + int(rng.integers(0, 10)), grey + int(rng.integers(5, 20)))
    else:  # killer whale: tall, near-triangular
        shape = dict(height=rng.uniform(1.1, 1.6), tip_x=rng.uniform(0.45, 0.75), trailing_base=rng.uniform(0.85, 1.0),
                     lead_bulge=rng.uniform(0.0, 0.06), trail_sag=rng.uniform(0.0, 0.08))
        dark = int(rng.integers(15, 40))
        color = (dark, dark, dark + int(rng.integers(0, 10)))
    fin = Fin(species=species, color=color, **shape)
    for _ in range(int(rng.integers(1, 5))):
        fin.notches.append((rng.uniform(0.12, 0.92), rng.uniform(0.035, 0.09), rng.uniform(0.025, 0.06)))
    for _ in range(int(rng.integers(0, 4))):
        x0, y0 = rng.uniform(0.15, 0.75), rng.uniform(0.1, 0.6) * fin.height
        ang, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.4)
        fin.scars.append((x0, y0, x0 + length * np.cos(ang), y0 + length * np.sin(ang), rng.uniform(0.012, 0.03)))
    for _ in range(int(rng.integers(1, 4))):
        fin.patches.append((rng.uniform(0.2, 0.7), rng.uniform(0.1, 0.55) * fin.height, rng.uniform(0.05, 0.16),
                            rng.uniform(0.04, 0.12), rng.choice([-1.0, 1.0]) * rng.uniform(30, 70)))
    return fin


def _bezier(p0, p1, p2, n):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)


def fin_outline(fin: Fin, n: int = 80) -> np.ndarray:
    """Closed outline in fin coordinates: leading edge up to the tip, notched trailing edge down."""
    tip = (fin.tip_x, fin.height)
    lead = _bezier((0.0, 0.0), (0.25 - fin.lead_bulge, 0.75 * fin.height), tip, n)
    trail = _bezier(tip, (fin.trailing_base - 0.15 - fin.trail_sag, 0.35 * fin.height), (fin.trailing_base, 0.0), n)
    # notches: push trailing-edge points inwards (towards the leading edge) in a V profile
    seg = np.diff(trail, axis=0, prepend=trail[:1])
    arc = np.cumsum(np.linalg.norm(seg, axis=1))
    s = arc / arc[-1]
    tangent = np.gradient(trail, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)  # left of travel = inside for this winding
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    depth = np.zeros(len(trail))
    for pos, d, w in fin.notches:
        depth = np.maximum(depth, d * np.clip(1 - np.abs(s - pos) / w, 0, 1))
    trail = trail - normal * depth[:, None]
    return np.concatenate([lead, trail[1:]])


def render_fin(fin: Fin) -> Image.Image:
    """RGBA texture of the fin: shaded skin, scars and patches, alpha = the notched silhouette."""
    outline = fin_outline(fin)
    x_max, y_max = max(1.0, outline[:, 0].max()) + 0.02, fin.height + 0.02
    w, h = int(np.ceil(x_max * TEXTURE)), int(np.ceil(y_max * TEXTURE))

    def px(pts):
        pts = np.atleast_2d(pts)
        return [(float(x * TEXTURE), float(h - 1 - y * TEXTURE)) for x, y in pts]

    yy = np.linspace(0.6, 1.0, h)[:, None, None]  # darker towards the tip
    skin = np.ones((h, w, 3)) * np.asarray(fin.color)[None, None, :] * (1.2 - 0.4 * (1 - yy))
    img = Image.fromarray(np.clip(skin, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for cx, cy, rx, ry, tone in fin.patches:
        c = tuple(int(np.clip(v + tone, 0, 255)) for v in fin.color)
        (x0, y1), (x1, y0) = px([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        draw.ellipse([x0, y0, x1, y1], fill=c)
    for x0, y0, x1, y1, width in fin.scars:
        c = tuple(int(min(255, v + 120)) for v in fin.color)
        draw.line(px([(x0, y0), (x1, y1)]), fill=c, width=max(1, int(width * TEXTURE)))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(px(outline), fill=255)
    img.putalpha(mask)
    return img


def _sea(rng: np.random.Generator, w: int, h: int, look: np.random.Generator | None = None) -> np.ndarray:
    look = rng if look is None else look  # the sea's colour and swell: the encounter's
    base = np.array([look.uniform(20, 70), look.uniform(60, 110), look.uniform(90, 150)])
    y = np.arange(h)[:, None] / h
    x = np.arange(w)[None, :] / w
    waves = np.zeros((h, w))
    for _ in range(4):
        f, phase, amp = look.uniform(8, 40), look.uniform(0, 2 * np.pi), look.uniform(4, 14)
        waves += amp * np.sin(2 * np.pi * f * (y + 0.08 * np.sin(2 * np.pi * look.uniform(1, 4) * x + phase)) + phase)
    sea = base[None, None, :] * (0.75 + 0.35 * y[..., None]) + waves[..., None] + rng.normal(0, 6, (h, w, 1))
    return sea


def render_photo(fin_texture: Image.Image, rng: np.random.Generator, width: int, height: int,
                 look: np.random.Generator | None = None) -> tuple[Image.Image, tuple]:
    """One photo of a fin; returns the image and the visible fin's box (x1, y1, x2, y2). ``look``
    draws what the photos of one encounter share (the sea, the side of the animal, the light);
    without it the photo draws them itself."""
    look = rng if look is None else look
    scene = _sea(rng, width, height, look)
    fin = fin_texture
    if look.random() < 0.5:  # the other side of the animal
        fin = fin.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    target_h = rng.uniform(0.3, 0.6) * height
    scale = target_h / fin.height
    fw = max(8, int(fin.width * scale * rng.uniform(0.7, 1.0)))  # foreshortening
    fh = max(8, int(fin.height * scale))
    fin = fin.resize((fw, fh), Image.Resampling.BILINEAR).rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR, expand=True)
    px_ = int(rng.uniform(0.02, 0.98) * (width - fin.width)) if width > fin.width else 0
    waterline = rng.uniform(0.55, 0.92) * height
    py_ = int(waterline - fin.height * rng.uniform(0.85, 1.0))
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    layer.paste(fin, (px_, py_), fin)
    arr = np.asarray(layer).astype(np.float64)
    alpha = arr[..., 3] / 255.0
    # the water covers the fin below a wavy waterline
    xs = np.arange(width)
    wl = waterline + rng.uniform(2, 6) * np.sin(2 * np.pi * xs / rng.uniform(30, 90) + rng.uniform(0, 6.3))
    alpha[np.arange(height)[:, None] > wl[None, :]] = 0.0
    # the animal's back: a dark hump around the fin base
    cx, hump_w = px_ + fin.width * 0.5, fin.width * rng.uniform(1.2, 2.2)
    dy = (np.arange(height)[:, None] - waterline) / (0.08 * fin.height + 2)
    hump = ((xs[None, :] - cx) / (hump_w / 2)) ** 2 + dy ** 2 < 1
    hump &= np.arange(height)[:, None] <= wl[None, :]
    scene[hump] = scene[hump] * 0.25 + arr[..., :3][alpha > 0.5].mean(axis=0) * 0.75 if (alpha > 0.5).any() else scene[hump]
    scene = scene * (1 - alpha[..., None]) + arr[..., :3] * alpha[..., None]
    # a passing wave crest hides part of the fin
    if rng.random() < 0.3:
        ccx, ccy = px_ + rng.uniform(0, fin.width), waterline - rng.uniform(0.0, 0.3) * fin.height
        rx, ry = rng.uniform(0.2, 0.5) * fin.width + 2, rng.uniform(0.08, 0.2) * fin.height + 2
        yy, xx = np.mgrid[0:height, 0:width]
        r = ((xx - ccx) / rx) ** 2 + ((yy - ccy) / ry) ** 2 + rng.normal(0, 0.15, (height, width))
        foam = np.clip(1.6 - r, 0, 1)[..., None]
        scene = scene * (1 - foam) + np.array([205, 218, 226]) * foam
        alpha = alpha * (1 - foam[..., 0])
    # light: exposure, contrast and a colour cast
    scene = (scene - 128) * look.uniform(0.7, 1.2) + 128 * look.uniform(0.7, 1.25)
    scene = scene * look.uniform(0.9, 1.1, size=3)[None, None, :]
    # spray: bright droplets
    if rng.random() < 0.35:
        n = int(rng.integers(50, 400))
        ys, xs_ = rng.integers(0, height, n), rng.integers(0, width, n)
        scene[ys, xs_] = scene[ys, xs_] * 0.2 + 235
    img = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.4)))
    visible = np.argwhere(alpha > 0.5)
    if len(visible) == 0:
        return img, None
    (y1, x1), (y2, x2) = visible.min(axis=0), visible.max(axis=0) + 1
    return img, (float(x1), float(y1), float(x2), float(y2))


def _training_counts(rng: np.random.Generator, n: int, mean: float) -> np.ndarray:
    """Uneven photos per individual: a long tail of well-photographed animals, many with 1-3."""
    return 1 + np.round(rng.exponential(max(mean - 1, 0.1), n)).astype(int)


def _draw(job: tuple) -> tuple[list, list, list]:
    """Draw and save a run of the plan's photos (``(idx, individual, part, file number)``, each
    individual's photos together, so one fin is rendered at a time: memory stays flat at
    Happywhale's 15,000 individuals); return their (rows, boxes, truth)."""
    out, cfg, species, photos = job
    rows, boxes, truth = [], [], []
    fin, fin_of = None, -1
    for idx, i, part, k, encounter in photos:
        ind = f"demo_{i:04d}"
        if i != fin_of:
            fin, fin_of = render_fin(make_fin(np.random.default_rng([cfg.seed, i, 1]), species[i])), i
        rng = np.random.default_rng([cfg.seed, i, 2, idx])

        def look():  # every photo of the encounter draws the same sea, side and light
            return None if encounter < 0 else np.random.default_rng([cfg.seed, i, 4, encounter])

        img, box = render_photo(fin, rng, cfg.width, cfg.height, look())
        for _ in range(20):  # a wave may hide the whole fin: draw that photo again
            if box is not None:
                break
            img, box = render_photo(fin, rng, cfg.width, cfg.height, look())
        name = f"{k:06d}.jpg"
        img.save(out / f"{part}_images" / name, quality=int(rng.integers(80, 96)))
        group = (f"{ind}_e{encounter}",) if cfg.photos_per_encounter > 1 else ()
        rows.append((part, (name, species[i], ind, *group)))
        if box is not None:
            boxes.append((name, *(round(v, 1) for v in box)))
        if part == "test":
            truth.append((name, ind))
    return rows, boxes, truth


def _encounters(plan: list[tuple[int, str]], cfg: DemoConfig) -> list[int]:
    """Each planned photo's encounter number within its individual (-1: a photo of its own): an
    individual's training photos fall into encounters of 1 + Poisson(photos_per_encounter - 1)
    photos; a test photo is always an encounter of its own (test photos come from other days)."""
    out = [-1] * len(plan)
    if cfg.photos_per_encounter <= 1:
        return out
    by_individual: dict[int, list[int]] = {}
    for idx, (i, part) in enumerate(plan):
        if part == "train":
            by_individual.setdefault(i, []).append(idx)
    for i, idxs in by_individual.items():
        rng, e, start = np.random.default_rng([cfg.seed, i, 3]), 0, 0
        while start < len(idxs):
            size = 1 + int(rng.poisson(cfg.photos_per_encounter - 1))
            for idx in idxs[start:start + size]:
                out[idx] = e
            start, e = start + size, e + 1
    return out


def generate(out_dir: str | os.PathLike, cfg: DemoConfig, progress: bool = True, workers: int = 1) -> dict:
    """Write the demo data set to ``out_dir`` (in ``workers`` processes: the same files whatever
    their number); return its counts."""
    out = Path(out_dir)
    (out / "train_images").mkdir(parents=True, exist_ok=True)
    (out / "test_images").mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(cfg.seed)
    total = cfg.individuals + cfg.new_individuals
    species = [SPECIES[i % len(SPECIES)] for i in range(total)]
    master.shuffle(species)
    counts = _training_counts(master, cfg.individuals, cfg.mean_images)
    known_in_test = master.random(cfg.individuals) < cfg.test_known_fraction
    plan = []  # (individual index, part)
    for i in range(cfg.individuals):
        plan += [(i, "train")] * int(counts[i]) + [(i, "test")] * int(known_in_test[i])
    for i in range(cfg.individuals, total):
        plan += [(i, "test")] * cfg.test_per_new
    order = master.permutation(len(plan))  # image numbers say nothing about the individual
    number = np.empty(len(plan), np.int64)
    number[order] = np.arange(len(plan))  # the plan's photo idx is file number[idx]
    photos = [(idx, i, part, int(number[idx]), e) for idx, ((i, part), e) in enumerate(zip(plan, _encounters(plan, cfg)))]
    runs = max(1, min(len(photos) // 50, 8 * max(workers, 1)))
    bounds = np.linspace(0, len(photos), runs + 1).astype(int)
    jobs = [(out, cfg, species, photos[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    rows = {"train": [], "test": []}
    boxes, truth = [], []
    bar = tqdm(total=len(photos), desc="demo: drawing photos", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_draw, jobs)
    else:
        pool, results = None, map(_draw, jobs)
    try:
        for job, (r, b, t) in zip(jobs, results):
            for part, row in r:
                rows[part].append(row)
            boxes += b
            truth += t
            bar.update(len(job[3]))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    _write_csv(out / "train.csv", ["image", "species", "individual_id"] + (["encounter"] if cfg.photos_per_encounter > 1 else []),
               sorted(rows["train"]))
    _write_csv(out / "boxes.csv", ["image", "x1", "y1", "x2", "y2"], sorted(boxes))
    _write_csv(out / "test_truth.csv", ["image", "individual_id"], sorted(truth))
    known_ids = {f"demo_{i:04d}" for i in range(cfg.individuals)}
    return {
        "individuals": cfg.individuals,
        "new_individuals": cfg.new_individuals,
        "train_images": len(rows["train"]),
        "test_images": len(rows["test"]),
        "test_known": sum(1 for _, ind in truth if ind in known_ids),
        "test_new": sum(1 for _, ind in truth if ind not in known_ids),
        "individuals_with_1_to_3_images": int(((counts >= 1) & (counts <= 3)).sum()),
    }


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
