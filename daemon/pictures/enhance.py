"""Auto-enhance: measure a picture's contrast and sharpness, and correct what falls short.

Two measurements, both on the luminance channel (0-255):

* **contrast spread**: the distance between the 1st and 99th percentile, as a fraction of the full
  range (1.0: the picture spans black to white; 0.3: a washed-out or murky picture);
* **sharpness**: the variance of the Laplacian (a 3x3 second-derivative filter), the usual
  focus/blur measure: high for crisp edges and fine detail, low for soft pictures.

A spread below ``target_spread`` is corrected by one linear stretch applied equally to R, G and B
(so hues do not shift), with the gain capped; a sharpness below ``target_sharpness`` by an unsharp
mask whose strength grows with the shortfall. A picture that already meets both targets is left
exactly as it is. The before/after measurements go into the response and the saved picture's
metadata, so every correction is checkable.

    >>> from PIL import Image
    >>> result = enhance(Image.new("RGB", (32, 32), (120, 120, 120)))
    >>> result.before["contrast_spread"], result.applied
    (0.0, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

TARGET_SPREAD = 0.80  # fraction of 0-255 between the 1st and 99th luminance percentiles
TARGET_SHARPNESS = 150.0  # variance of the Laplacian of 0-255 luminance
MAX_GAIN = 4.0  # the contrast stretch never multiplies differences by more than this
MIN_SPREAD = 0.02  # flatter than this is a solid colour: nothing to stretch
_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


@dataclass
class EnhanceResult:
    image: Image.Image
    before: dict[str, float]
    after: dict[str, float]
    applied: list[str] = field(default_factory=list)  # "contrast", "sharpness", in that order

    def metrics(self) -> dict[str, Any]:
        """What goes into the response and the picture's record."""
        return {"before": self.before, "after": self.after, "applied": list(self.applied)}


def luminance(image: Image.Image) -> np.ndarray:
    """ITU-R 601 luma of an RGB picture as float64 0-255."""
    return np.asarray(image.convert("L"), dtype=np.float64)


def contrast_spread(luma: np.ndarray) -> float:
    low, high = np.percentile(luma, [1, 99])
    return float((high - low) / 255.0)


def laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian over the picture's interior (edges would be padding)."""
    if min(luma.shape) < 3:
        return 0.0
    out = sum(_LAPLACIAN[i, j] * luma[i:luma.shape[0] - 2 + i, j:luma.shape[1] - 2 + j]
              for i in range(3) for j in range(3) if _LAPLACIAN[i, j])
    return float(np.var(out))


def measure(image: Image.Image) -> dict[str, float]:
    """Contrast spread (0-1), sharpness (Laplacian variance) and mean brightness (0-255)."""
    luma = luminance(image)
    return {"contrast_spread": round(contrast_spread(luma), 4),
            "sharpness": round(laplacian_variance(luma), 2),
            "brightness": round(float(luma.mean()), 2)}


def enhance(image: Image.Image, target_spread: float = TARGET_SPREAD,
            target_sharpness: float = TARGET_SHARPNESS) -> EnhanceResult:
    """Correct contrast, then sharpness, where each falls short of its target.

    Returns:
        the corrected picture (the same object when nothing was needed) with before/after metrics.
    """
    image = image.convert("RGB")
    before = measure(image)
    applied: list[str] = []
    out = image
    luma = luminance(out)
    spread = contrast_spread(luma)
    if MIN_SPREAD <= spread < target_spread:
        low, high = np.percentile(luma, [1, 99])
        gain = min(MAX_GAIN, target_spread * 255.0 / max(high - low, 1e-6))
        centre = (low + high) / 2
        # Keep the mid-tone where it is, clamped so the stretched range stays inside 0-255.
        centre_out = float(np.clip(centre, (high - low) * gain / 2, 255 - (high - low) * gain / 2))
        pixels = np.asarray(out, dtype=np.float64)
        pixels = (pixels - centre) * gain + centre_out
        out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
        applied.append("contrast")
    sharpness = laplacian_variance(luminance(out))
    if sharpness < target_sharpness and spread >= MIN_SPREAD:
        shortfall = target_sharpness / max(sharpness, 1.0)
        percent = int(min(250, 60 + 60 * np.log2(shortfall)))
        radius = 1.0 if min(out.size) < 256 else 2.0
        out = out.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=1))
        applied.append("sharpness")
    return EnhanceResult(out, before, measure(out) if applied else dict(before), applied)
