"""npuflow.vision.images: every accepted format, broken and hostile input, orientation, RGB conversion."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from npuflow.vision import ImageError
from npuflow.vision.images import decode_image, probe_image

LIMIT = 4096 * 4096


def _pattern(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    arr = rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    return Image.fromarray(arr, mode)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,lossless", [("PNG", True), ("JPEG", False), ("WEBP", True), ("GIF", False)])
def test_every_format_probes_and_decodes(fmt, lossless):
    src = _pattern(37, 21)
    data = _encode(src, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert probe_image(data, max_pixels=LIMIT) == (37, 21, fmt)
    img = decode_image(data, max_pixels=LIMIT)
    assert img.mode == "RGB" and img.size == (37, 21)
    if lossless:
        assert np.array_equal(np.asarray(img), np.asarray(src))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_truncated_file_is_refused(fmt):
    data = _encode(_pattern(300, 200), fmt)
    with pytest.raises(ImageError, match="truncated"):
        probe_image(data[: len(data) * 2 // 3], max_pixels=LIMIT)
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) * 2 // 3], max_pixels=LIMIT)


@pytest.mark.parametrize("data", [b"", b"hello world", os.urandom(4096), b"\x89PNG\r\n\x1a\n" + b"\0" * 10])
def test_random_bytes_are_not_an_image(data):
    with pytest.raises(ImageError) as e:
        probe_image(data, max_pixels=LIMIT)
    assert str(e.value) in ("not an image", "truncated", "truncated or corrupt image data")


def test_other_format_is_named():
    data = _encode(_pattern(8, 8), "BMP")
    with pytest.raises(ImageError, match="^unsupported format BMP$"):
        probe_image(data, max_pixels=LIMIT)
    with pytest.raises(ImageError, match="^unsupported format TIFF$"):
        decode_image(_encode(_pattern(8, 8), "TIFF"), max_pixels=LIMIT)


def test_too_many_pixels_refused_before_decoding():
    # a 20000 x 20000 PNG of one colour compresses to about 1 MB; the header alone must refuse it
    data = _encode(Image.new("L", (20000, 20000)), "PNG", compress_level=9)
    with pytest.raises(ImageError, match=r"^too large: 20000 x 20000 pixels, the limit is 1000000$"):
        probe_image(data, max_pixels=1_000_000)
    small = _encode(_pattern(100, 50), "PNG")
    with pytest.raises(ImageError, match=r"^too large: 100 x 50 pixels, the limit is 4999$"):
        decode_image(small, max_pixels=4999)
    assert probe_image(small, max_pixels=5000)[:2] == (100, 50)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert probe_image(buf.getvalue(), max_pixels=LIMIT) == (16, 12, "GIF")
    img = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert np.array_equal(np.unique(np.asarray(img).reshape(-1, 3), axis=0), [[255, 0, 0]])


def test_exif_orientation_is_applied_and_probe_agrees():
    src = _pattern(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(src, "JPEG", exif=exif.tobytes(), quality=95)
    assert probe_image(data, max_pixels=LIMIT) == (20, 40, "JPEG")
    img = decode_image(data, max_pixels=LIMIT)
    assert img.size == (20, 40)
    plain = decode_image(_encode(src, "JPEG", quality=95), max_pixels=LIMIT)
    assert np.array_equal(np.asarray(img), np.asarray(plain.transpose(Image.Transpose.ROTATE_270)))


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    img.putpixel((0, 0), (200, 100, 50, 255))
    img.putpixel((1, 0), (0, 0, 0, 128))
    out = np.asarray(decode_image(_encode(img, "PNG"), max_pixels=LIMIT))
    assert out[1, 3].tolist() == [255, 255, 255]          # fully transparent -> white
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[0, 1].tolist() == [127, 127, 127]          # half black over white


def test_palette_transparency_and_grey_modes():
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    data = _encode(pal, "GIF", transparency=0)
    out = np.asarray(decode_image(data, max_pixels=LIMIT))
    assert out[0].tolist() == [[255, 255, 255], [255, 0, 0], [255, 255, 255]]
    grey = decode_image(_encode(Image.new("L", (2, 2), 77), "PNG"), max_pixels=LIMIT)
    assert grey.mode == "RGB" and np.asarray(grey).tolist() == [[[77] * 3] * 2] * 2
    la = decode_image(_encode(Image.new("LA", (1, 1), (0, 0)), "PNG"), max_pixels=LIMIT)
    assert np.asarray(la).tolist() == [[[255, 255, 255]]]


@pytest.mark.heavy
def test_rgb_conversion_matches_transformers():
    from transformers.image_transforms import convert_to_rgb

    rng = np.random.default_rng(1)
    rgba = Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA")
    for img in (rgba, rgba.convert("LA"), rgba.convert("P"), rgba.convert("L"), rgba.convert("CMYK")):
        data = _encode(img, "PNG" if img.mode != "CMYK" else "JPEG")
        ours = np.asarray(decode_image(data, max_pixels=LIMIT))
        with Image.open(io.BytesIO(data)) as ref:
            assert np.array_equal(ours, convert_to_rgb(ref, return_numpy=True)), img.mode


def test_sixteen_bit_and_one_bit_pngs_decode_to_rgb():
    deep = Image.fromarray(np.array([[0, 65535], [100, 40000]], dtype=np.uint16))
    out = decode_image(_encode(deep, "PNG"), max_pixels=LIMIT)
    assert out.mode == "RGB" and out.size == (2, 2)
    assert np.asarray(out)[:, :, 0].tolist() == [[0, 255], [100, 255]]   # Pillow's clip, as convert("RGB") does
    bits = decode_image(_encode(Image.new("1", (3, 2), 1), "PNG"), max_pixels=LIMIT)
    assert np.asarray(bits).min() == 255


@pytest.mark.heavy
def test_orientation_matches_transformers_load_image_of_a_data_url():
    import base64

    from transformers.image_utils import load_image

    exif = Image.Exif()
    for orientation in (1, 3, 6, 8):
        exif[0x0112] = orientation
        data = _encode(_pattern(30, 14), "JPEG", exif=exif.tobytes(), quality=90)
        ref = load_image("data:image/jpeg;base64," + base64.b64encode(data).decode())
        ours = decode_image(data, max_pixels=LIMIT)
        assert ours.size == ref.size == probe_image(data, max_pixels=LIMIT)[:2]
        assert np.array_equal(np.asarray(ours), np.asarray(ref)), orientation
