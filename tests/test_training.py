"""The shared training loop: its own LR per param group, a loss that goes down, exact resume,
never resuming a stale run, and two processes under gloo that stay in step."""

import os
import socket
from pathlib import Path

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
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
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
    return TrainConfig(**{"epochs": 4, "batch_size": 16, "weight_decay": 1e-4, "freeze_epochs": 0, "frozen_stages": 0,
                          "grad_accum": 1, "clip_norm": 1.0, "seed": 0, "workers": 0, "compile": False,
                          "lrs": {"backbone": 0.01, "head": 0.1}, "device": "cpu", **kw})


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


def _dolg(backbone):
    torch.manual_seed(0)
    return create_model(dict(kind="dolg", backbone=backbone, embedding_dim=16, local_dim=8, dilations=[1, 2],
                             n_classes=4, margins=[0.2] * 4, scale=16.0))


def _ddp_dolg_worker(rank, world, port, out_dir, backbone):
    """The real DOLG under DistributedDataParallel: a straight run, then one killed after an epoch and resumed."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    y = torch.arange(32) % 4
    data = TensorDataset(torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.3
                         + torch.linspace(-1, 1, 4)[y][:, None, None, None], y)
    cfg = _cfg(epochs=3, batch_size=8, freeze_epochs=1, frozen_stages=1,
               lrs={"backbone": 1e-3, "dolg": 3e-3, "neck": 3e-3, "head": 3e-2})
    loss = lambda m, xb, yb: F.cross_entropy(m(xb, yb), yb)  # noqa: E731
    val = lambda m, epoch: {"val": float(epoch)}  # noqa: E731 - rank 0 alone validates
    straight = _dolg(backbone)
    fit(straight, loss, data, cfg, Path(out_dir) / "straight", "k", on_epoch_end=val)
    killed = _dolg(backbone)
    first = fit(killed, loss, data, cfg, Path(out_dir) / "resumed", "k", on_epoch_end=val, stop_after=1)
    resumed = _dolg(backbone)
    history = fit(resumed, loss, data, cfg, Path(out_dir) / "resumed", "k", on_epoch_end=val)
    # parameters: DDP keeps them equal on every rank (BatchNorm statistics are each rank's own; rank 0's are saved)
    flat = lambda m: torch.cat([v.detach().float().flatten() for v in m.parameters()]).numpy()  # noqa: E731
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), straight=flat(straight), resumed=flat(resumed),
             first=len(first), history=len(history))
    dist.destroy_process_group()


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_dolg_trains_under_ddp_and_resumes_with_rank_0_alone_writing(tmp_path, backbone):
    # the DOLG takes the backbone's intermediates: a backbone module left without a gradient made DDP stop
    # at step 2 ("Expected to have finished reduction"); after a resume every rank used to think it had trained
    mp.spawn(_ddp_dolg_worker, args=(2, _free_port(), str(tmp_path), backbone), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert np.array_equal(r0["straight"], r1["straight"])  # the ranks stayed in step
    assert np.array_equal(r0["straight"], r0["resumed"]) and np.array_equal(r1["straight"], r1["resumed"])
    assert int(r0["first"]) == 1 and int(r0["history"]) == 3  # rank 0's history covers every epoch
    assert int(r1["first"]) == 0 and int(r1["history"]) == 0  # rank 1 never reports a history: it writes nothing


def test_an_unreadable_resume_state_is_discarded_in_one_line_and_training_starts_over(tmp_path, capsys):
    data, cfg = _data(), _cfg(epochs=3)
    fit(Tiny(), _ce, data, cfg, tmp_path, "k", stop_after=1)
    state = tmp_path / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated, as by a full disk or a copy cut short
    model = Tiny()
    history = fit(model, _ce, data, cfg, tmp_path, "k")
    out = capsys.readouterr().out
    assert "discarding an unreadable training state" in out and "starts over" in out
    assert [r["epoch"] for r in history] == [0, 1, 2]
    straight = Tiny()
    fit(straight, _ce, data, cfg, None, "k")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in straight.state_dict().items())


def test_a_last_batch_of_one_sample_does_not_break_batchnorm():
    """17 images in batches of 16 leave one: BatchNorm cannot train on a single sample, so it is dropped."""

    class WithBN1d(Tiny):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))

    history = fit(WithBN1d(), _ce, _data(n=17), _cfg(epochs=2, batch_size=16), None, "k")
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])


class WithBackbone(Tiny):
    """Tiny with its body named as photoid's models name the part a linear probe freezes."""

    def __init__(self):
        super().__init__()
        self.backbone = self.body
        del self.body

    def forward(self, x):
        return self.fc(self.backbone(x))

    def param_groups(self):
        return {"backbone": list(self.backbone.parameters()), "head": list(self.fc.parameters())}


def test_linear_probe_keeps_the_backbone_and_its_batchnorm_then_fine_tunes():
    seen = []
    model = WithBackbone()
    start = _weights(model)

    def probe(m, epoch):
        seen.append(_weights(m))
        return {}

    history = fit(model, _ce, _data(), _cfg(epochs=4, freeze_epochs=2), None, "k", on_epoch_end=probe)
    after_probe = seen[1]
    for k, v in start.items():
        if k.startswith("backbone."):  # weights and BatchNorm statistics untouched while frozen
            assert torch.equal(after_probe[k], v), k
    assert not torch.equal(after_probe["fc.weight"], start["fc.weight"])  # the new layer learned
    assert not torch.equal(seen[3]["backbone.0.weight"], start["backbone.0.weight"])  # then the backbone did
    assert [r["frozen"] for r in history] == [True, True, False, False]
    assert history[0]["lr"]["backbone"] == 0.0 and history[2]["lr"]["backbone"] > 0  # its one-cycle starts late
    assert all(p.requires_grad for p in model.parameters())  # released at the end


def test_one_cycle_warms_up_then_decays_and_waits_for_its_start():
    from photoid.train.loop import one_cycle

    f = one_cycle(100, start=40, pct_start=0.25)
    assert [f(t) for t in (0, 39)] == [0.0, 0.0]
    values = [f(t) for t in range(40, 100)]
    peak = int(np.argmax(values))
    assert peak == 15 and values[peak] == pytest.approx(1.0)  # 25 % of the 60 steps left
    assert all(np.diff(values[:peak + 1]) > 0) and all(np.diff(values[peak:]) <= 0)
    assert values[0] == pytest.approx(1 / 25) and values[-1] < 0.01


def test_the_best_epoch_is_kept_not_the_last(tmp_path):
    scores = {0: 0.2, 1: 0.9, 2: 0.5, 3: 0.4}
    snapshots = {}

    def validate(m, epoch):
        snapshots[epoch] = _weights(m)
        return {"val_score": scores[epoch]}

    model = Tiny()
    history = fit(model, _ce, _data(), _cfg(epochs=4, select="val_score"), tmp_path, "k", on_epoch_end=validate)
    for k, v in snapshots[1].items():
        assert torch.equal(model.state_dict()[k], v), k
    from photoid.train.loop import selected

    assert selected(history)["epoch"] == 1 and [r["selected"] for r in history] == [False, True, False, False]
    # killed after the best epoch and resumed: the best one is still the one kept
    snapshots.clear()
    first = Tiny()
    fit(first, _ce, _data(), _cfg(epochs=4, select="val_score"), tmp_path / "b", "k", on_epoch_end=validate, stop_after=2)
    best = snapshots[1]
    resumed = Tiny()
    fit(resumed, _ce, _data(), _cfg(epochs=4, select="val_score"), tmp_path / "b", "k", on_epoch_end=validate)
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in best.items())


def test_frozen_early_stages_never_train_and_the_rest_does():
    from photoid.train.loop import early_stages

    torch.manual_seed(0)
    model = create_model(dict(kind="classifier", backbone="resnet18", n_classes=4))
    kept = early_stages(model.backbone, 2)  # stem and layer1 (timm feature stages 'act1', 'layer1')
    assert model.backbone.layer1 in kept and model.backbone.layer2 not in kept and model.backbone.conv1 in kept
    before = _weights(model)
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 4
    fit(model, _ce, TensorDataset(x, y), _cfg(epochs=2, lrs={"backbone": 0.01, "head": 0.1}, frozen_stages=2), None, "k")
    after = model.state_dict()
    for k in before:
        if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1.")):
            assert torch.equal(before[k], after[k]), k  # weights and BatchNorm statistics
    assert not torch.equal(before["backbone.layer2.0.conv1.weight"], after["backbone.layer2.0.conv1.weight"])
    with pytest.raises(ValueError, match="feature stages"):
        early_stages(model.backbone, 9)
