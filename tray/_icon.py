"""The tray icon, drawn with Pillow: a brush on a disc whose colour and badge say the state.

=========  ==============================================
state      look
=========  ==============================================
starting   grey disc, three dots (waiting)
ready      green disc
busy       amber disc with a badge that fills with the batch's progress
offline    green disc with a blue padlock badge (no-network mode)
error      red disc with a white "!" badge
=========  ==============================================

The shapes differ as well as the colours, so the states stay apart for colour-blind users and
on monochrome panels.

    >>> from pennello.tray import draw_icon
    >>> draw_icon("busy", size=64, progress=0.5).size
    (64, 64)

``python -m pennello.tray._icon FILE.png [SIZE]`` writes the ready icon (the installers use it
for the menu entry).
"""

from __future__ import annotations

import sys
import typing

from PIL import Image, ImageDraw

from ._controller import TrayState

SUPERSAMPLE = 4  # drawn 4x larger, then downscaled: smooth edges without an antialiasing API

_DISC: dict[str, tuple[int, int, int]] = {
    "starting": (128, 132, 140),
    "ready": (46, 160, 90),
    "busy": (230, 150, 30),
    "offline": (46, 160, 90),
    "error": (205, 45, 45),
}
assert set(_DISC) == set(typing.get_args(TrayState))
_BADGE_BLUE = (40, 90, 200)
_WHITE = (255, 255, 255, 255)


def draw_icon(state: TrayState, size: int = 64, progress: float | None = None) -> Image.Image:
    """An RGBA icon of ``size`` pixels for ``state``.

    Args:
        progress: for ``busy``, the fraction of the running batch done (0..1); None draws an
            indeterminate quarter ring.
    """
    s = size * SUPERSAMPLE
    image = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    pad = s // 16
    draw.ellipse((pad, pad, s - pad, s - pad), fill=(*_DISC[state], 255))
    if state == "starting":
        r = s // 16
        for i in (-1, 0, 1):
            cx, cy = s // 2 + i * s // 5, s // 2
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_WHITE)
    else:
        _brush(draw, s)
    if state == "busy":
        _pie(draw, s, progress)
    elif state == "offline":
        _padlock(draw, s)
    elif state == "error":
        _alert(draw, s)
    return image.resize((size, size), Image.LANCZOS)


def _brush(draw: ImageDraw.ImageDraw, s: int) -> None:
    """A paint brush from the upper right to the lower left (the pennello)."""
    handle = s // 11
    draw.line((s * 0.70, s * 0.26, s * 0.45, s * 0.52), fill=_WHITE, width=handle)
    draw.ellipse((s * 0.66, s * 0.22, s * 0.66 + handle, s * 0.22 + handle), fill=_WHITE)
    ferrule = [(s * 0.47, s * 0.44), (s * 0.54, s * 0.51), (s * 0.45, s * 0.60), (s * 0.38, s * 0.53)]
    draw.polygon(ferrule, fill=(225, 225, 225, 255))
    tip = [(s * 0.38, s * 0.53), (s * 0.45, s * 0.60), (s * 0.36, s * 0.72), (s * 0.26, s * 0.76),
           (s * 0.29, s * 0.64)]
    draw.polygon(tip, fill=_WHITE)


def _badge(draw: ImageDraw.ImageDraw, s: int, colour: tuple[int, int, int]) -> tuple[float, float, float]:
    r = s * 0.22
    cx, cy = s - r - 1, s - r - 1
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*colour, 255), outline=_WHITE, width=max(1, s // 40))
    return cx, cy, r


def _pie(draw: ImageDraw.ImageDraw, s: int, progress: float | None) -> None:
    """A clock-like badge filling up with the running batch's progress."""
    cx, cy, r = _badge(draw, s, (150, 85, 0))
    sweep = 90 if progress is None else max(12, int(360 * min(max(progress, 0.0), 1.0)))
    inner = r * 0.72
    draw.pieslice((cx - inner, cy - inner, cx + inner, cy + inner), -90, -90 + sweep, fill=_WHITE)


def _padlock(draw: ImageDraw.ImageDraw, s: int) -> None:
    cx, cy, r = _badge(draw, s, _BADGE_BLUE)
    w, h = r * 0.95, r * 0.7
    draw.rectangle((cx - w / 2, cy - h / 4, cx + w / 2, cy + h * 0.75), fill=_WHITE)
    shackle = r * 0.32
    draw.arc((cx - shackle, cy - h / 4 - shackle * 1.6, cx + shackle, cy - h / 4 + shackle * 0.4), 180, 360,
             fill=_WHITE, width=max(2, int(r * 0.16)))


def _alert(draw: ImageDraw.ImageDraw, s: int) -> None:
    cx, cy, r = _badge(draw, s, (150, 20, 20))
    bar = r * 0.22
    draw.rounded_rectangle((cx - bar / 2, cy - r * 0.6, cx + bar / 2, cy + r * 0.15), radius=bar / 2, fill=_WHITE)
    draw.ellipse((cx - bar / 1.6, cy + r * 0.32, cx + bar / 1.6, cy + r * 0.32 + bar * 1.25), fill=_WHITE)


if __name__ == "__main__":  # python -m pennello.tray._icon FILE.png [SIZE]
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m pennello.tray._icon FILE.png [SIZE]")
    draw_icon("ready", int(sys.argv[2]) if len(sys.argv) == 3 else 256).save(sys.argv[1])
