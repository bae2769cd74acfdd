"""One image in, one training-ready square PNG out: decode → RGB → crop → resize → encode.

Everything here is a pure function of the input bytes and the settings, so the
same file always gives the same PNG bytes (the prepared data set is
byte-identical across reruns). Problems with one file raise `UnusableImage`
with a short reason; the caller skips that file and lists the reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# A face photo is well under a megapixel; anything past this is refused before
# its pixels are decoded, so a decompression bomb cannot exhaust memory.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# The CelebA "aligned" convention of the DDIM and StyleGAN papers: a 128×128 box
# at left 25, top 57 of the 178×218 image (centre x=89, y=121).
CELEBA_SIZE = (178, 218)
CELEBA_BOX = (25, 57, 153, 185)

# PNG is lossless at every level; level 1 is several times faster to write than
# the default 6 and only slightly larger.
PNG_COMPRESS_LEVEL = 1

# Alpha is composited onto this background, the colour of an empty page.
ALPHA_BACKGROUND = (255, 255, 255)


class UnusableImage(Exception):
    """This file cannot become a training image; the message says why."""


def decode(data: bytes) -> Image.Image:
    """Open encoded image bytes, refusing empty, non-image and oversized input."""
    if not data:
        raise UnusableImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UnusableImage(f"refused: {width}x{height} pixels exceeds the "
                                    f"{MAX_PIXELS:,}-pixel limit (decompression bomb guard)")
            image.load()
    except UnusableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnusableImage(f"refused: decompression bomb ({err})") from None
    except Image.UnidentifiedImageError:
        raise UnusableImage("not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UnusableImage(f"corrupt or truncated image ({err})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, honouring EXIF orientation and alpha."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert("L") clips 16-bit values at 255; rescale the full range.
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.round(pixels / 257.0).clip(0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        raise UnusableImage("unsupported mode F (floating-point pixels of unknown range)")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def crop_box(size: tuple[int, int], crop: str) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box that `crop` keeps of an image of `size`."""
    width, height = size
    if crop == "none":
        return (0, 0, width, height)
    if crop == "center":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return (left, top, left + side, top + side)
    if crop == "celeba":
        if (width, height) == CELEBA_SIZE:
            return CELEBA_BOX
        # Other sizes (e.g. a rescaled CelebA) keep the same box relative to the image.
        scale = width / CELEBA_SIZE[0]
        side = round(128 * scale)
        left = round(89 * scale) - side // 2
        top = round(121 * height / CELEBA_SIZE[1]) - side // 2
        if left < 0 or top < 0 or left + side > width or top + side > height:
            raise UnusableImage(f"{width}x{height} image cannot hold the celeba crop box; "
                                "use data.crop=center for non-CelebA images")
        return (left, top, left + side, top + side)
    raise ValueError(f"unknown crop {crop!r}")


def square_png(image: Image.Image, crop: str, img_size: int, min_size: int) -> bytes:
    """Crop an RGB image, resize it to img_size² with antialiasing and encode as PNG."""
    box = crop_box(image.size, crop)
    width, height = box[2] - box[0], box[3] - box[1]
    if min(width, height) < min_size:
        raise UnusableImage(f"too small: {width}x{height} after crop is below "
                            f"data.min_size={min_size}")
    square = image.crop(box).resize((img_size, img_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    square.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def prepare_image(data: bytes | Image.Image, crop: str, img_size: int, min_size: int) -> bytes:
    """Encoded bytes (or an already drawn image) → the prepared PNG bytes."""
    image = data if isinstance(data, Image.Image) else decode(data)
    return square_png(to_rgb(image), crop, img_size, min_size)
