"""Opening photos: every odd-but-valid image becomes upright 8-bit RGB; every unusable one gets a reason."""

import numpy as np
from PIL import Image

from photoid.images import check_image, load_rgb, reduce_factor


def test_zero_byte_file_is_rejected(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert check_image(p).reason == "empty file (0 bytes)"


def test_text_file_with_image_extension_is_rejected(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("field notes, not a photo")
    assert check_image(p).reason.startswith("not an image")


def test_truncated_jpeg_is_rejected(photo):
    p = photo("fin.jpg", size=(400, 300))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    check = check_image(p)
    assert not check.ok and "truncated" in check.reason


def test_corrupt_png_is_rejected(photo):
    p = photo("fin.png", size=(200, 100))
    data = bytearray(p.read_bytes())
    data[60:120] = b"\x00" * 60  # break the compressed data
    p.write_bytes(bytes(data))
    assert not check_image(p).ok


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((30, 80, 3), np.uint8)
    arr[:, :10] = 255  # a white band on the left of the stored pixels
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = tmp_path / "rotated.jpg"
    img.save(p, exif=exif, quality=95)
    check = check_image(p)
    assert (check.width, check.height) == (30, 80)
    upright = np.asarray(load_rgb(p))
    assert upright.shape == (80, 30, 3)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the band is now on top


def test_every_mode_becomes_rgb(photo, tmp_path):
    cases = {
        "gray.png": dict(mode="L"),
        "cmyk.jpg": dict(mode="CMYK"),
        "rgba.png": dict(mode="RGBA"),
        "palette.png": dict(mode="P"),
        "bw.png": dict(mode="1"),
    }
    for name, kw in cases.items():
        p = photo(name, **kw)
        assert check_image(p).ok, name
        img = load_rgb(p)
        assert img.mode == "RGB" and img.size == (64, 48), name


def test_16_bit_image_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)  # mode I;16
    assert check_image(p).ok
    out = np.asarray(load_rgb(p))[0, :, 0]
    np.testing.assert_allclose(out, [0, 64, 128, 255], atol=1)


def test_reduced_decoding_keeps_enough_pixels(photo):
    p = photo("big.jpg", size=(1600, 1200))
    f = reduce_factor(1600, 1200, 300)
    assert f == 4
    img = load_rgb(p, reduce=f)
    assert max(img.size) >= 300 and img.size == (400, 300)
    assert reduce_factor(200, 100, 300) == 1
