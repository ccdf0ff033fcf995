"""The shared training loop: its own LR per param group, a loss that goes down, exact resume,
never resuming a stale run, and two processes under gloo that stay in step."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from photoid.models import create_model
from photoid.train.loop import TrainConfig, build_optimizer, fit


class Tiny(nn.Module):
    def __init__(self, n_classes=4):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(self.body(x))

    def param_groups(self):
        return {"backbone": list(self.body.parameters()), "head": list(self.fc.parameters())}


def _data(n=64, n_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = torch.randn(n, 3, 8, 8, generator=g) * 0.5 + y[:, None, None, None].float()  # separable by brightness
    return TensorDataset(x, y)


def _ce(m, x, y):
    return F.cross_entropy(m(x), y)


def _cfg(**kw):
    return TrainConfig(**{"epochs": 4, "batch_size": 16, "lrs": {"backbone": 0.01, "head": 0.1}, "device": "cpu", **kw})


def test_each_param_group_has_its_own_lr():
    model = create_model(dict(kind="dolg", backbone="resnet18", embedding_dim=16, local_dim=8, dilations=[1, 2],
                              n_classes=3, margins=[0.3] * 3, scale=10.0))
    lrs = {"backbone": 1e-4, "dolg": 1e-3, "neck": 2e-3, "head": 1e-2}
    opt = build_optimizer(model, lrs, 0.0)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == lrs
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))  # every parameter, once
    with pytest.raises(ValueError, match="no learning rate"):
        build_optimizer(model, {"backbone": 1e-4}, 0.0)


def test_loss_goes_down():
    history = fit(Tiny(), _ce, _data(), _cfg(epochs=6), None, "k")
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert all(r["img_per_s"] > 0 for r in history)


def test_dolg_arcface_learns_on_tiny_data():
    torch.manual_seed(0)
    model = create_model(dict(kind="dolg", backbone="resnet18", embedding_dim=32, local_dim=16, dilations=[1, 2],
                              n_classes=4, margins=[0.2] * 4, scale=16.0))
    y = torch.arange(32) % 4
    x = torch.randn(32, 3, 64, 64) * 0.3 + torch.linspace(-1, 1, 4)[y][:, None, None, None]
    cfg = _cfg(epochs=5, lrs={"backbone": 1e-3, "dolg": 3e-3, "neck": 3e-3, "head": 3e-2})
    history = fit(model, lambda m, xb, yb: F.cross_entropy(m(xb, yb), yb), TensorDataset(x, y), cfg, None, "k")
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_interrupted_and_resumed_ends_with_the_same_weights(tmp_path, capsys):
    data, cfg = _data(), _cfg(epochs=5)
    straight = Tiny()
    fit(straight, _ce, data, cfg, tmp_path / "a", "key1")
    first = Tiny()
    fit(first, _ce, data, cfg, tmp_path / "b", "key1", stop_after=2)  # "killed" after two epochs
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=False)["epoch"] == 1
    resumed = Tiny()  # a fresh process: fresh weights
    history = fit(resumed, _ce, data, cfg, tmp_path / "b", "key1")
    assert "resuming from epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in history] == [0, 1, 2, 3, 4]
    for k, v in _weights(straight).items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_changed_params_never_resume_a_stale_run(tmp_path, capsys):
    data = _data()
    fit(Tiny(), _ce, data, _cfg(epochs=5), tmp_path, "old-params", stop_after=2)
    fresh = Tiny()
    history = fit(fresh, _ce, data, _cfg(epochs=5), tmp_path, "new-params")
    assert "discarding" in capsys.readouterr().out
    assert [r["epoch"] for r in history] == [0, 1, 2, 3, 4]
    straight = Tiny()
    fit(straight, _ce, data, _cfg(epochs=5), None, "new-params")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in straight.state_dict().items())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    mismatches = []

    def checked_loss(m, x, y):
        # the weights every rank steps from must be the same on all ranks
        flat = torch.cat([p.detach().flatten() for p in m.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        mismatches.append(float(max((g - gathered[0]).abs().max() for g in gathered)))
        return _ce(m, x, y)

    history = fit(Tiny(), checked_loss, _data(), _cfg(epochs=4), None, "k")
    np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.array(mismatches))
    if rank == 0:
        np.save(os.path.join(out_dir, "loss.npy"), np.array([r["train_loss"] for r in history]))
    dist.destroy_process_group()


def test_two_processes_under_gloo_stay_in_step_and_learn(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        mismatches = np.load(tmp_path / f"rank{rank}.npy")
        assert len(mismatches) >= 8 and mismatches.max() == 0.0
    loss = np.load(tmp_path / "loss.npy")
    assert loss[-1] < loss[0]


def test_a_last_batch_of_one_sample_does_not_break_batchnorm():
    """17 images in batches of 16 leave one: BatchNorm cannot train on a single sample, so it is dropped."""

    class WithBN1d(Tiny):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))

    history = fit(WithBN1d(), _ce, _data(n=17), _cfg(epochs=2, batch_size=16), None, "k")
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])
