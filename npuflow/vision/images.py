"""Decode image bytes (PNG, JPEG, WebP, GIF first frame) with Pillow, refusing bombs and broken files.

The size is read from the header and checked against `max_pixels` before any pixel is decoded;
then the first frame is decoded in full, so a truncated file fails here and not later.

What an image means, decided once for every caller:
- EXIF orientation is applied (`ImageOps.exif_transpose`), as transformers' `load_image` does for
  the URLs and data URLs of a chat message, and as any viewer shows the picture; probe_image
  reports the width and height after it, the size decode_image returns.
- Conversion to RGB is transformers' `convert_to_rgb` (what its image processors do with a PIL image
  when do_convert_rgb): an image with an alpha band or a transparency entry (palette GIF/PNG) is
  composited over opaque white; any other mode is Pillow's convert("RGB").
"""
from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from . import ImageError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)


def _format_of(data: bytes) -> str | None:
    """The format Pillow would call these bytes (header only), or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:
        return None


def _signed(data: bytes) -> bool:
    head = bytes(data[:12])
    return (head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a"))
            or head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _header_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header, by the format plugin itself (Image.open adds the bomb check)."""
    Image.preinit()
    for fmt in FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(bytes(data[:16])):
            with factory(io.BytesIO(data), "") as img:
                return img.size
    raise ImageError("not an image")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The first frame, decoded, size checked before decoding."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise ImageError("not an image")
    try:  # (no warnings.catch_warnings: it is not thread-safe, and probes run in an executor)
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:  # past Pillow's own limit: its plugin reads the header again
        try:
            width, height = _header_size(data)
        except Exception:
            raise ImageError(f"too large: over {Image.MAX_IMAGE_PIXELS} pixels, the limit is {max_pixels}") from None
        raise ImageError(f"too large: {width} x {height} pixels, the limit is {max_pixels}") from None
    except UnidentifiedImageError:
        other = _format_of(data)
        raise ImageError(f"unsupported format {other}" if other else "not an image") from None
    except Exception:  # a known signature whose data does not parse (WebP decodes at open)
        raise ImageError("truncated or corrupt image data" if _signed(data) else "not an image") from None
    width, height = img.size
    try:
        if width < 1 or height < 1:
            raise ImageError("not an image")
        if width * height > max_pixels:
            raise ImageError(f"too large: {width} x {height} pixels, the limit is {max_pixels}")
        img.load()
    except ImageError:
        img.close()
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error... for broken data
        img.close()
        text = str(e).lower()
        raise ImageError("truncated" if "truncat" in text or isinstance(e, EOFError) else
                         "truncated or corrupt image data") from None
    return img


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    try:
        orientation = img.getexif().get(_ORIENTATION)
    except Exception:
        orientation = None
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def probe_image(data: bytes, *, max_pixels: int) -> tuple[int, int, str]:
    """(width, height, format) of a valid image, the size as decode_image returns it."""
    img = _open(data, max_pixels)
    try:
        width, height = _oriented_size(img)
        return width, height, str(img.format)
    finally:
        img.close()


def to_rgb(img: Image.Image) -> Image.Image:
    """transformers' convert_to_rgb: alpha composited over white, everything else convert("RGB")."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """The first frame as an RGB image, EXIF orientation applied."""
    img = _open(data, max_pixels)
    try:
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:
            oriented = img
        try:
            return to_rgb(oriented)
        except Exception:  # a mode Pillow cannot turn into RGB
            raise ImageError(f"unsupported image mode {oriented.mode}") from None
    finally:
        img.close()
