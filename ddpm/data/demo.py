"""A built-in, procedurally drawn face-like data set for offline demos and smoke tests.

Not real faces and not a benchmark: cartoon heads (skin-toned oval, hair,
eyes, brows, nose, mouth) with random colours, pose jitter and background, so
a diffusion model has visible structure to learn in minutes on a CPU. Image i
depends only on (seed, i), so any subset can be redrawn identically.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_CANVAS = 128

_SKIN = np.array([[255, 224, 196], [241, 194, 155], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [92, 56, 30]], dtype=float)
_HAIR = np.array([[20, 15, 10], [70, 45, 25], [140, 95, 50], [215, 180, 110],
                  [160, 60, 30], [120, 120, 120]], dtype=float)


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float = 12.0) -> tuple:
    base = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    return tuple(int(c) for c in base.clip(0, 255))


def draw_face(seed: int, index: int) -> Image.Image:
    """Draw demo image `index` of the set seeded by `seed` (RGB, 128×128)."""
    rng = np.random.default_rng([seed, index])
    s = DEMO_CANVAS
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, s)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(s, axis=1).astype(np.uint8)
    image = Image.fromarray(background, "RGB")
    draw = ImageDraw.Draw(image)

    cx, cy = s / 2 + rng.normal(0, 4), s / 2 + 6 + rng.normal(0, 4)
    rx, ry = s * rng.uniform(0.22, 0.30), s * rng.uniform(0.30, 0.38)
    skin, hair = _colour(rng, _SKIN), _colour(rng, _HAIR)
    # Hair behind the head, then the face oval over it.
    hair_drop = rng.uniform(0.2, 1.0)
    draw.ellipse([cx - rx * 1.15, cy - ry * 1.2, cx + rx * 1.15, cy + ry * hair_drop], fill=hair)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    draw.chord([cx - rx * 1.05, cy - ry * 1.15, cx + rx * 1.05, cy - ry * 0.1],
               180, 360, fill=hair)

    eye_y, eye_dx = cy - ry * 0.12, rx * rng.uniform(0.38, 0.5)
    eye_r, iris = rx * rng.uniform(0.14, 0.2), _colour(rng, _HAIR[:3], 20)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_r * 1.4, eye_y - eye_r, ex + eye_r * 1.4, eye_y + eye_r],
                     fill=(245, 245, 245))
        draw.ellipse([ex - eye_r * 0.7, eye_y - eye_r * 0.7, ex + eye_r * 0.7,
                      eye_y + eye_r * 0.7], fill=iris)
        brow_y = eye_y - eye_r * rng.uniform(1.8, 2.6)
        draw.line([ex - eye_r * 1.5, brow_y + side * rng.normal(0, 1.5), ex + eye_r * 1.5,
                   brow_y - side * rng.normal(0, 1.5)], fill=hair, width=2)

    nose = tuple(int(c * 0.8) for c in skin)
    draw.line([cx, eye_y + eye_r, cx - rx * 0.08, cy + ry * 0.25, cx + rx * 0.05,
               cy + ry * 0.28], fill=nose, width=2)
    mouth_y, mouth_w = cy + ry * 0.5, rx * rng.uniform(0.3, 0.55)
    smile = rng.uniform(-0.1, 0.25) * ry
    lips = _colour(rng, np.array([[170, 60, 70], [130, 50, 50], [200, 90, 100]]), 10)
    draw.arc([cx - mouth_w, mouth_y - abs(smile) - 2, cx + mouth_w, mouth_y + abs(smile) + 2],
             0 if smile >= 0 else 180, 180 if smile >= 0 else 360, fill=lips, width=3)

    angle = rng.normal(0.0, 6.0)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=tuple(top))
    return image.filter(ImageFilter.GaussianBlur(radius=0.6))
