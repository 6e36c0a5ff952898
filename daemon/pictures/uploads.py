"""Safe decoding of uploaded pictures: limits on bytes, format and pixels, checked before decoding.

Every tool that takes a picture from a client (enhance, upscale, edit) decodes it here. The
format is recognised from the file's first bytes (never from its name or Content-Type), only
PNG, JPEG and WebP are accepted, and the header's width x height is checked against the limit
before any pixel is decoded, so a small file that would expand to gigabytes (a decompression
bomb) is refused cheaply:

    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO(); Image.new("RGB", (8, 8)).save(buffer, "PNG")
    >>> decode_upload(buffer.getvalue(), ImagesConfig()).size
    (8, 8)

Also the IPTC digital source types a saved picture is marked with (see :mod:`.outputs`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import typing
import warnings
from typing import Literal

from PIL import Image, ImageOps

from pennello.config import ImagesConfig
from pennello.errors import RequestError, TooLargeError

UploadFormat = Literal["png", "jpeg", "webp"]
UPLOAD_FORMATS: tuple[str, ...] = typing.get_args(UploadFormat)

_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# A picture pennello changed but did not draw (enhanced or upscaled upload).
ALGORITHMICALLY_ENHANCED = _IPTC + "algorithmicallyEnhanced"
# A picture pennello redrew parts of (image-to-image, inpainting).
COMPOSITE_WITH_TRAINED_MEDIA = _IPTC + "compositeWithTrainedAlgorithmicMedia"


def sniff_format(data: bytes) -> str | None:
    """The upload format from the file's magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_upload(data: bytes, limits: ImagesConfig, field: str = "image", mode: str = "RGB") -> Image.Image:
    """Decode one uploaded picture, refusing anything over ``limits`` before decoding it.

    Args:
        field: the request field the picture came in, named in errors.
        mode: the Pillow mode to return (``RGB``, or ``RGBA`` to keep a mask's alpha).

    Raises:
        TooLargeError: more bytes or pixels than allowed (HTTP 413).
        RequestError: empty, not PNG/JPEG/WebP, or corrupt (HTTP 400).
    """
    if not data:
        raise RequestError(f"{field} is empty; send a PNG, JPEG or WebP file", field=field)
    if len(data) > limits.max_upload_bytes:
        raise TooLargeError(f"{field} is larger than {limits.max_upload_bytes} bytes "
                            f"(images.max_upload_bytes); send a smaller file", field=field)
    fmt = sniff_format(data)
    if fmt is None:
        raise RequestError(f"{field} is not a PNG, JPEG or WebP file", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
            width, height = image.size
            if width * height > limits.max_upload_pixels:
                raise TooLargeError(f"{field} is {width}x{height} pixels; the limit is "
                                    f"{limits.max_upload_pixels} pixels (images.max_upload_pixels)",
                                    field=field)
            image.load()  # first frame only for animated files
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooLargeError(f"{field} would decode to too many pixels: {e}", field=field) from e
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise RequestError(f"{field} is not a readable {fmt.upper()} file: {e}", field=field) from e
    image = ImageOps.exif_transpose(image)
    return image.convert(mode)


def decode_base64_upload(text: str, limits: ImagesConfig, field: str, mode: str = "RGB") -> Image.Image:
    """A base64 picture (optionally a ``data:image/...;base64,`` URL), as A1111 clients send them."""
    if not isinstance(text, str):
        raise RequestError(f"{field} must be a base64 string", field=field)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > limits.max_upload_bytes * 4 // 3 + 4:
        raise TooLargeError(f"{field} is over {limits.max_upload_bytes} bytes (images.max_upload_bytes)",
                            field=field)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{field} is not valid base64", field=field) from e
    return decode_upload(data, limits, field, mode)


def digest(data: bytes) -> str:
    """``sha256:…`` of an upload, kept in the result's record to say what it was made from."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
