"""The crop cache (photoid.crop_cache) and the training data path that reads it: the same pixels as
decoding, built once, never stale, bounded in what it sends to workers, and the same weights
whatever the number of DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from photoid.crop_cache import CropCache
from photoid.datasets import CropDataset, decode, eval_transform, train_transform
from photoid.models import create_model
from photoid.train.loop import EpochSampler, TrainConfig, fit
from tests.pipeline import embed_in_memory


def _crops(folder, n=6, size=40, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"c{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (size, size + 4 * i, 3), dtype=np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def test_cached_crops_are_the_decoded_crops_at_the_training_size(tmp_path):
    paths = _crops(tmp_path / "crops")
    cache = CropCache.open(paths, 32, tmp_path / "cache")
    assert cache.array.shape == (len(paths), 3, 32, 32) and cache.array.dtype == np.uint8
    direct = CropDataset(paths, transform=eval_transform(32))
    cached = CropDataset(paths, transform=eval_transform(32), cache=cache)
    for i in range(len(paths)):
        assert torch.equal(direct[i][0], cached[i][0])  # evaluation sees the very same pixels
    same_size = CropCache.open(paths[:1], 40, tmp_path / "cache")  # a square crop at its own size: untouched
    assert torch.equal(same_size.image(0), decode(paths[0]))


def test_the_cache_is_built_once_and_a_changed_crop_is_never_served_stale(tmp_path, capsys):
    paths = _crops(tmp_path / "crops")
    first = CropCache.open(paths, 24, tmp_path / "cache")
    assert "decoded once" in capsys.readouterr().out
    again = CropCache.open(list(reversed(paths)), 24, tmp_path / "cache")  # same crops, any order
    assert again.file == first.file and "decoded once" not in capsys.readouterr().out
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(paths[2])  # the crop stage re-ran
    changed = CropCache.open(paths, 24, tmp_path / "cache")
    assert changed.file != first.file
    assert changed.image(changed.row(paths[2])).float().mean() < 3  # the new, black crop
    assert CropCache.open(paths, 32, tmp_path / "cache").file != changed.file  # one cache per size
    with pytest.raises(KeyError, match="not in the crop cache"):
        changed.row(str(tmp_path / "other.jpg"))
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_workers_get_the_cache_file_not_its_data(tmp_path):
    paths = _crops(tmp_path / "crops", n=4)
    cache = CropCache.open(paths, 64, tmp_path / "cache")
    cache.image(0)  # the map is open in this process
    assert len(pickle.dumps(cache)) < 4 * 3 * 64 * 64 / 4
    ds = CropDataset(paths, transform=eval_transform(64), cache=cache)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.stack([ds[i][0] for i in range(4)]))


def test_a_missing_crop_names_the_file_and_the_stage_to_re_run(tmp_path):
    paths = _crops(tmp_path / "crops", n=2)
    with pytest.raises(Exception, match=r"c9\.jpg.*dvc repro crop"):
        CropCache.open(paths + [str(tmp_path / "crops" / "c9.jpg")], 32, tmp_path / "cache")


def test_each_epoch_draws_a_new_order_and_each_rank_a_disjoint_share():
    s = EpochSampler(10, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for i, _ in e0) == list(range(10)) and [i for i, _ in e0] != [i for i, _ in e1]
    assert {seed for _, seed in e0}.isdisjoint({seed for _, seed in e1})
    ranks = [EpochSampler(10, seed=3, rank=r, world=3) for r in range(3)]
    shares = [[i for i, _ in r] for r in ranks]
    assert all(len(x) == 4 for x in shares) and set().union(*shares) == set(range(10))


def _train(paths, labels, cache, workers):
    torch.manual_seed(0)
    model = create_model(dict(kind="classifier", backbone="resnet18", n_classes=2))
    ds = CropDataset(paths, labels, train_transform(32, hflip=True), cache=cache)
    cfg = TrainConfig(epochs=2, batch_size=4, weight_decay=0.0, freeze_epochs=0, frozen_stages=0, grad_accum=1,
                      clip_norm=1.0, seed=0, workers=workers, compile=False, lrs={"backbone": 1e-3, "head": 1e-2},
                      device="cpu")
    fit(model, lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y), ds, cfg, None, "k")
    return model.state_dict()


def test_the_same_weights_with_or_without_loader_workers(tmp_path):
    """Augmentation is drawn per image from (seed, epoch, image), not from whichever process made it."""
    paths = _crops(tmp_path / "crops", n=8, size=36)
    labels = np.arange(8) % 2
    cache = CropCache.open(paths, 32, tmp_path / "cache")
    alone, with_workers = _train(paths, labels, cache, 0), _train(paths, labels, cache, 2)
    assert all(torch.equal(alone[k], with_workers[k]) for k in alone)


def test_validation_embeddings_read_from_the_cache_equal_those_from_the_files(tmp_path):
    paths = _crops(tmp_path / "crops", n=5, size=48)
    model = create_model(dict(kind="classifier", backbone="resnet18", n_classes=2)).eval()
    cache = CropCache.open(paths, 32, tmp_path / "cache")
    assert np.allclose(embed_in_memory(model.embed, paths, 32, flip=True),
                       embed_in_memory(model.embed, paths, 32, flip=True, cache=cache), atol=1e-6)


def test_the_cache_lives_in_the_project_unless_photoid_cache_points_elsewhere(tmp_path, monkeypatch):
    from photoid.paths import FoldOutputs

    monkeypatch.delenv("PHOTOID_CACHE", raising=False)
    assert FoldOutputs("dolg", 0, tmp_path / "proj").crop_cache == tmp_path / "proj/cache/crops"
    monkeypatch.setenv("PHOTOID_CACHE", str(tmp_path / "fast"))
    assert FoldOutputs("retrain", 1, tmp_path / "proj").crop_cache == tmp_path / "fast/crops"


def test_decode_gives_the_files_rgb_pixels_channels_first_without_a_deprecation_warning(tmp_path):
    import warnings

    colour = _crops(tmp_path / "c", n=1, size=24)[0]
    grey = tmp_path / "grey.jpg"
    Image.fromarray(np.arange(24 * 30, dtype=np.uint8).reshape(24, 30) % 251).save(grey, quality=95)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's decoders warn on every call since 0.29
        got, got_grey = decode(colour), decode(str(grey))
    assert got.dtype == torch.uint8 and got.shape == (3, 24, 24)
    assert np.array_equal(got.numpy(), np.asarray(Image.open(colour).convert("RGB")).transpose(2, 0, 1))
    assert got_grey.shape == (3, 24, 30)  # a one-channel file comes back as RGB, its three channels equal
    assert torch.equal(got_grey[0], got_grey[1]) and torch.equal(got_grey[1], got_grey[2])
