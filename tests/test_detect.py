"""Detection helpers: ultralytics stays offline and out of the repo; no detection means full frame."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from photoid import detect
from tests.structure import project_config

TINY_YAML = Path(detect.__file__).parent / "detect_models" / "yolov8-tiny.yaml"


def test_box_iou_on_hand_computed_cases():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(detect.box_iou(a, b), [1.0, 50 / 150, 0.0])


def test_ultralytics_is_offline_with_integrations_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ul = detect.offline_ultralytics()
    from ultralytics import settings
    from ultralytics.utils import is_online

    assert os.environ["YOLO_OFFLINE"] == "1" and not is_online()
    assert not any(settings[k] for k in ("dvc", "mlflow", "clearml", "comet", "wandb", "tensorboard", "sync"))
    assert Path(os.environ["YOLO_CONFIG_DIR"]) in Path(settings.file).parents
    assert (Path(settings.file).parent / "Arial.ttf").exists()  # no font download when it plots
    assert ul.utils.torch_utils.NUM_THREADS == os.cpu_count()
    assert list(tmp_path.iterdir()) == []  # wrote nothing into the working directory


def test_ultralytics_leaves_image_checks_alone(tmp_path):
    detect.offline_ultralytics()  # it patches PIL.Image.open on import; photoid undoes that
    from photoid.images import check_image

    p = tmp_path / "notes.jpg"
    p.write_text("not a photo")
    assert check_image(p).reason.startswith("not an image")


def test_no_detection_above_threshold_falls_back_to_full_frame(photo):
    paths = [photo(f"p{i}.jpg", size=(96, 64)) for i in range(3)]
    images = pd.DataFrame([dict(image_id=p.name, path=str(p), width=96, height=64) for p in paths])
    # an untrained detector is never 99.9 % sure of anything
    cfg = project_config(detect.DetectConfig, "detect", img_size=64, batch=2, conf=0.999)
    ul = detect.offline_ultralytics()
    model = ul.YOLO(str(TINY_YAML))
    weights = Path(paths[0]).parent / "untrained.pt"
    model.save(str(weights))
    boxes = detect.predict_boxes(images, weights, cfg, "cpu")
    assert boxes.box_source.tolist() == [detect.FULL_FRAME] * 3
    assert boxes[["x1", "y1", "x2", "y2"]].values.tolist() == [[0, 0, 96, 64]] * 3


def test_yolo_dataset_labels_are_normalised_centre_boxes(tmp_path, photo):
    p = photo("a.jpg", size=(200, 100))
    rows = [dict(image_id=f"{k}.jpg", path=str(p), width=200, height=100, box_x1=50.0, box_y1=25.0, box_x2=150.0,
                 box_y2=75.0) for k in range(5)]
    data_yaml, n_train, n_val = detect.write_yolo_dataset(pd.DataFrame(rows), tmp_path / "yolo", img_size=64,
                                                          val_fraction=0.2, seed=0)
    assert (n_train, n_val) == (4, 1)
    label = next((tmp_path / "yolo" / "labels" / "train").glob("*.txt")).read_text().split()
    assert [float(v) for v in label] == pytest.approx([0, 0.5, 0.5, 0.5, 0.5])
    assert "names" in data_yaml.read_text()


def test_every_animal_of_a_photo_is_a_detector_target(tmp_path, photo):
    """A photo of two fins: its label file holds both boxes, the labelled animal's first."""
    p = photo("pod.jpg", size=(200, 100))
    rows = [dict(image_id=f"{k}.jpg", path=str(p), width=200, height=100, box_x1=100.0, box_y1=0.0, box_x2=200.0,
                 box_y2=100.0, other_boxes=[0.0, 50.0, 20.0, 100.0]) for k in range(5)]
    detect.write_yolo_dataset(pd.DataFrame(rows), tmp_path / "yolo", img_size=64, val_fraction=0.2, seed=0)
    lines = next((tmp_path / "yolo" / "labels" / "train").glob("*.txt")).read_text().splitlines()
    assert [[float(v) for v in line.split()] for line in lines] == [pytest.approx([0, 0.75, 0.5, 0.5, 1.0]),
                                                                   pytest.approx([0, 0.05, 0.75, 0.1, 0.5])]
