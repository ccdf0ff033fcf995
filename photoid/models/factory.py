"""One way to build, save and load every model: a state_dict plus the config dict that built it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from photoid.errors import MissingInput
from photoid.io import atomic_path
from photoid.models.arcface import ArcFaceHead
from photoid.models.dolg import DOLG, Classifier


class DOLGArcFace(nn.Module):
    """DOLG embedding plus its ArcFace head, trained together."""

    def __init__(self, dolg: DOLG, head: ArcFaceHead):
        super().__init__()
        self.dolg, self.head = dolg, head

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.dolg(x), labels)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.dolg(x)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {**self.dolg.param_groups(), "head": list(self.head.parameters())}


def create_model(config: dict) -> nn.Module:
    """``config["kind"]``: ``classifier`` or ``dolg``; the rest are that model's arguments."""
    kind = config["kind"]
    if kind == "classifier":
        return Classifier(config["backbone"], config["n_classes"], pretrained=config.get("pretrained", "false"),
                          drop_rate=config.get("drop_rate", 0.0))
    if kind == "dolg":
        dolg = DOLG(config["backbone"], embedding_dim=config["embedding_dim"], local_dim=config["local_dim"],
                    dilations=tuple(config["dilations"]), gem_p=config.get("gem_p", 3.0),
                    pretrained=config.get("pretrained", "false"), drop_rate=config.get("drop_rate", 0.0))
        head = ArcFaceHead(config["embedding_dim"], config["n_classes"], margins=config["margins"],
                           scale=config["scale"], subcenters=config.get("subcenters", 1))
        return DOLGArcFace(dolg, head)
    raise ValueError(f"unknown model kind {kind!r}")


def _unwrapped(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def save_model(path: str | os.PathLike, model: nn.Module, config: dict, extra: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        torch.save({"config": config, "state_dict": _unwrapped(model).state_dict(), **(extra or {})}, tmp)


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """The model saved at ``path`` and its checkpoint dict (config and anything saved with it)."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist: run the stage that trains it (`dvc repro`).")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    config = dict(ckpt["config"], pretrained="false")  # the weights are in the checkpoint
    model = create_model(config)
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt
