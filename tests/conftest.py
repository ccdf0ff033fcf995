from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MARINE_SAMPLE = REPO.parent / "shared" / "data" / "marine_sample"


def save_photo(path: Path, size=(64, 48), color=(30, 90, 140), mode="RGB", **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    arr = np.clip(np.asarray(color)[None, None, :] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, **save_kw)
    return path


@pytest.fixture
def photo(tmp_path):
    """A factory for small valid photos under tmp_path."""
    return lambda rel, **kw: save_photo(tmp_path / rel, **kw)


@pytest.fixture(scope="session")
def marine_sample() -> Path:
    if not MARINE_SAMPLE.is_dir():
        pytest.skip(f"{MARINE_SAMPLE} not found: the shared folder belongs beside the checkout")
    return MARINE_SAMPLE
