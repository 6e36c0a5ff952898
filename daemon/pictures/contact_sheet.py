"""Contact sheets: a grid of pictures with a label per row and per column.

    >>> from PIL import Image
    >>> rows = [("photo", [Image.new("RGB", (64, 64), "red")] * 3),
    ...         ("anime", [Image.new("RGB", (64, 64), "blue")] * 2)]
    >>> sheet = contact_sheet(rows, ["seed 1", "seed 2", "seed 3"], title="a kite")
    >>> sheet.size[0] > 3 * 64
    True
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

MAX_CELL = 256  # a picture's longest side on the sheet
_PAD = 8
_BACKGROUND, _INK, _EMPTY = (250, 250, 248), (30, 30, 30), (225, 225, 222)


def contact_sheet(rows: list[tuple[str, list[Image.Image]]], columns: list[str], title: str = "",
                  cell: int | None = None) -> Image.Image:
    """Rows of pictures (a row may be shorter than ``columns``: the rest stays empty).

    Args:
        rows: (label, pictures) per row.
        columns: a label per column.
        cell: the longest side of a picture on the sheet; default the largest picture's, at most
            :data:`MAX_CELL` (small pictures are enlarged with nearest-neighbour, not blurred).
    """
    font = ImageFont.load_default()
    pictures = [image for _, images in rows for image in images]
    side = cell or min(MAX_CELL, max(max(image.size) for image in pictures) if pictures else 64)
    side = max(side, 96)  # room for the labels under small pictures
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max([measure.textlength(label, font=font) for label, _ in rows] + [0]) + 2 * _PAD
    line = 14
    top = (line + _PAD if title else 0) + line + _PAD
    width = int(label_width + len(columns) * (side + _PAD) + _PAD)
    height = int(top + len(rows) * (side + _PAD) + _PAD)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((_PAD, _PAD), title, fill=_INK, font=font)
    for c, label in enumerate(columns):
        draw.text((label_width + c * (side + _PAD), top - line - 2), label, fill=_INK, font=font)
    for r, (label, images) in enumerate(rows):
        y = int(top + r * (side + _PAD))
        draw.text((_PAD, y + side // 2 - line // 2), label, fill=_INK, font=font)
        for c in range(len(columns)):
            x = int(label_width + c * (side + _PAD))
            if c >= len(images):
                draw.rectangle((x, y, x + side - 1, y + side - 1), fill=_EMPTY)
                continue
            image = images[c].convert("RGB")
            scale = side / max(image.size)
            resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
            thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 resample)
            sheet.paste(thumb, (x + (side - thumb.width) // 2, y + (side - thumb.height) // 2))
    return sheet
