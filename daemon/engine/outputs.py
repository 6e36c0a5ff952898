"""Saving generated pictures with their provenance, finding them again, and pruning old ones.

Each picture is written atomically (temp file, fsync, rename) to
``outputs_dir/YYYY-MM-DD/<id>.<ext>``. It carries its parameters in two places: a PNG
``parameters`` text chunk in the common A1111 style (PNG only, read by many tools), and an XMP
packet (every format) holding the IPTC DigitalSourceType *trainedAlgorithmicMedia*, which marks
it as AI-generated, plus pennello's own JSON record that the gallery reads back.

    >>> import tempfile
    >>> outputs = Outputs(Path(tempfile.mkdtemp()))
    >>> saved = outputs.save(Image.new("RGB", (64, 64)), {"prompt": "a kite", "seed": 1}, "png")
    >>> outputs.read_record(saved.id)["prompt"], saved.path.suffix
    ('a kite', '.png')
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets
import shutil
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin

from pennello.errors import NotFoundError
from pennello.files import fsync_dir, write_atomic

from .jobs import OutputImage
from .params import ImageFormat

log = logging.getLogger(__name__)

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS: dict[str, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_ID_RE = re.compile(r"^(\d{8})-\d{6}-\d{6}-[0-9a-f]{8}$")
_PENNELLO_NS = "https://pennello.invalid/ns/1.0/"
_XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/"
    xmlns:pennello="{ns}">
   <Iptc4xmpExt:DigitalSourceType>{source}</Iptc4xmpExt:DigitalSourceType>
   <pennello:record>{record}</pennello:record>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""
_LOSSY_QUALITY = 90


_last_id_time = datetime.min
_id_lock = threading.Lock()


def new_image_id() -> str:
    """A unique id that sorts by creation time (to the microsecond, strictly increasing within
    this process) and tells which day directory holds the file."""
    global _last_id_time
    with _id_lock:
        now = max(datetime.now(), _last_id_time + timedelta(microseconds=1))
        _last_id_time = now
    return _image_id(now, secrets.token_hex(4))


def _image_id(when: datetime, suffix: str) -> str:
    """The id format :data:`_ID_RE` reads: creation time to the microsecond, then 8 hex digits."""
    return f"{when:%Y%m%d-%H%M%S-%f}-{suffix}"


_CALL_ID_RE = re.compile(r"^(\d{1,20})-([0-9a-f]{8})$")


def image_id_for_call(call_id: str) -> str | None:
    """The picture id a call saves under when it may be sent twice, from its call id
    (``"<unix time in ns>-<8 hex digits>"``, made by the isolated server's proxy when the call
    arrived): the same call saves the same picture again, never a second one. None when
    ``call_id`` is not one."""
    match = _CALL_ID_RE.match(call_id)
    if match is None:
        return None
    try:
        when = datetime.fromtimestamp(int(match.group(1)) // 1000 / 1e6)
    except (OverflowError, OSError, ValueError):
        return None
    return _image_id(when, match.group(2))


def a1111_parameters(record: dict[str, Any]) -> str:
    """The ``parameters`` text many image tools read, in A1111's order and wording. A hires-fixed
    picture's ``Size`` is its first pass's, as in A1111 (the fix's keys say how it grew)."""
    lines = [record.get("prompt", "")]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    hires = record.get("hires") or {}
    size = {"size": hires.get("first_pass_size", record.get("size"))}
    values = {**record, **size, "strength": record.get("strength")}
    pairs = [(label, values[key]) for label, key in (
        ("Steps", "steps"), ("Sampler", "sampler"), ("Schedule type", "scheduler"), ("CFG scale", "guidance"),
        ("Seed", "seed"), ("Size", "size"), ("Model", "model"), ("Denoising strength", "strength"),
        ("Model version", "model_version"), ("Manifest digest", "manifest_digest"))
        if values.get(key) is not None]
    at = next((i for i, (label, _) in enumerate(pairs) if label == "Model version"), len(pairs))
    pairs[at:at] = extra_parameters(record).items()
    lines.append(", ".join(f"{label}: {value}" for label, value in pairs))
    return "\n".join(lines)


def extra_parameters(record: dict[str, Any]) -> dict[str, Any]:
    """The infotext keys beyond the basic ones: a hires-fixed picture's ``Hires …``, as A1111 writes
    them (``Hires steps`` only when the second pass had its own count), and for a picture drawn
    smaller than asked (:func:`.resolve.native_size`) ``Native size`` and ``Upscaled to``."""
    out: dict[str, Any] = {}
    if record.get("native_size"):
        out.update({"Native size": record["native_size"], "Upscaled to": record.get("size")})
    hires = record.get("hires") or {}
    if not hires:
        return out
    out["Hires upscale"] = f"{hires['upscale']:g}"
    if hires.get("steps"):
        out["Hires steps"] = hires["steps"]
    out["Hires upscaler"] = hires["upscaler"]
    if hires.get("plain_resize"):
        out["Hires upscaled as"] = "a Lanczos resize (pennello has no latent pass)"
    return out


def xmp_packet(record: dict[str, Any], source: str = TRAINED_ALGORITHMIC_MEDIA) -> bytes:
    return _XMP.format(ns=_PENNELLO_NS, source=escape(source),
                       record=escape(json.dumps(record, sort_keys=True))).encode("utf-8")


def parse_xmp(xmp: bytes | str) -> tuple[str | None, dict[str, Any]]:
    """Return (DigitalSourceType, pennello record) from an XMP packet; missing parts are empty.

    Uploads carry XMP from anywhere: a packet that is not XML, or a record that is not a JSON
    object, counts as no metadata rather than failing the request.
    """
    try:
        text = xmp.decode("utf-8") if isinstance(xmp, bytes) else xmp
        start, end = text.find("<x:xmpmeta"), text.rfind("</x:xmpmeta>")
        if start < 0 or end < 0:
            return None, {}
        root = ElementTree.fromstring(text[start:end + len("</x:xmpmeta>")])
        source = root.findtext(".//{http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/}DigitalSourceType")
        record = json.loads(root.findtext(f".//{{{_PENNELLO_NS}}}record") or "{}")
    except (ElementTree.ParseError, ValueError, RecursionError) as e:  # bad UTF-8 and JSON are ValueErrors
        log.debug("ignoring malformed XMP: %s", e)
        return None, {}
    return source, (record if isinstance(record, dict) else {})


class Outputs:
    """The outputs directory: save, look up by id, list newest first, prune."""

    def __init__(self, root: Path, png_compress_level: int = 1) -> None:
        self.root = root
        self.png_compress_level = png_compress_level

    def save(self, image: Image.Image, record: dict[str, Any], fmt: ImageFormat,
             source: str = TRAINED_ALGORITHMIC_MEDIA, durable: bool = True,
             image_id: str | None = None) -> OutputImage:
        """Encode and write one picture atomically; ``record`` becomes its embedded metadata.

        Args:
            source: its IPTC DigitalSourceType (AI-drawn unless an upload was only enhanced or edited).
            durable: fsync before returning; False leaves that to a later
                :func:`pennello.files.make_durable` (the device thread does so after answering).
            image_id: the id to save under (:func:`image_id_for_call`), replacing a picture saved
                under it before; None makes a new one.
        """
        image_id = image_id or new_image_id()
        record = {**record, "id": image_id, "format": fmt, "created": time.time()}
        path = self._path(image_id, fmt)
        data = self._encode(image, record, fmt, source)
        write_atomic(path, data, durable=durable)
        return OutputImage(image_id, path, int(record.get("seed", 0)), image.width, image.height, fmt)

    def _encode(self, image: Image.Image, record: dict[str, Any], fmt: ImageFormat,
                source: str = TRAINED_ALGORITHMIC_MEDIA) -> bytes:
        buffer = io.BytesIO()
        xmp = xmp_packet(record, source)
        if fmt == "png":
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", a1111_parameters(record))
            info.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8"))
            image.save(buffer, "PNG", pnginfo=info, compress_level=self.png_compress_level)
        else:
            image.convert("RGB").save(buffer, fmt.upper(), quality=_LOSSY_QUALITY, xmp=xmp)
        return buffer.getvalue()

    def _path(self, image_id: str, fmt: str) -> Path:
        assert _ID_RE.match(image_id), image_id
        return self.root / _day_of(image_id) / f"{image_id}.{EXTENSIONS[fmt]}"

    def find(self, image_id: str, owner: str | None = None) -> Path:
        """The file of a picture, if it exists and (when ``owner`` is given) belongs to ``owner``.

        Raises:
            NotFoundError: malformed id, no such picture (it may have been pruned), or someone
                else's picture (told apart from a missing one on purpose).
        """
        if _ID_RE.match(image_id) and _is_day(_day_of(image_id)):
            for fmt in EXTENSIONS:
                path = self._path(image_id, fmt)
                if path.is_file() and (owner is None or read_record(path).get("owner") == owner):
                    return path
        raise NotFoundError(f"no image with id {image_id!r}", field="id")

    def delete(self, image_id: str, owner: str | None = None) -> Path:
        """Remove a picture (when ``owner`` is given, only one of ``owner``'s) and return its path.

        One file holds the picture and its record, so one unlink removes both at once; a reader
        sees the whole picture or none. The directory is synced so the removal survives a crash.

        Raises:
            NotFoundError: as :meth:`find`, also when another request removed it first.
        """
        path = self.find(image_id, owner)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFoundError(f"no image with id {image_id!r}", field="id") from None
        fsync_dir(path.parent)
        log.info("deleted picture %s", image_id)
        return path

    def read_record(self, image_id: str) -> dict[str, Any]:
        return read_record(self.find(image_id))

    def iter_newest(self) -> Iterator[Path]:
        """Every saved picture, newest first (ids sort by time)."""
        if not self.root.is_dir():
            return
        for day in sorted((d for d in self.root.iterdir() if d.is_dir() and _is_day(d.name)),
                          reverse=True):
            files = [p for p in day.iterdir() if _ID_RE.match(p.stem) and p.suffix[1:] in EXTENSIONS.values()]
            yield from sorted(files, key=lambda p: p.stem, reverse=True)

    def gallery(self, owner: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Records of saved pictures, newest first, optionally only those of ``owner``."""
        page: list[dict[str, Any]] = []
        skipped = 0
        for path in self.iter_newest():
            try:
                record = read_record(path)
            except (OSError, SyntaxError, ValueError) as e:  # e.g. cut short by a power failure
                log.warning("skipping unreadable picture %s: %s", path, e)
                continue
            if owner is not None and record.get("owner") != owner:
                continue
            if skipped < offset:
                skipped += 1
                continue
            page.append(record)
            if len(page) >= limit:
                break
        return page

    def prune(self, retention_days: int, today: date | None = None) -> int:
        """Delete day directories older than ``retention_days`` (0 keeps everything).

        Returns:
            how many day directories were removed.
        """
        if retention_days <= 0 or not self.root.is_dir():
            return 0
        cutoff = (today or date.today()) - timedelta(days=retention_days)
        removed = 0
        for day in self.root.iterdir():
            if day.is_dir() and _is_day(day.name) and date.fromisoformat(day.name) < cutoff:
                shutil.rmtree(day)
                removed += 1
        if removed:
            log.info("pruned %d day(s) of outputs older than %d days", removed, retention_days)
        return removed


def read_record(path: Path) -> dict[str, Any]:
    """The pennello record embedded in a saved picture (falls back to what the file itself says)."""
    with Image.open(path) as image:
        xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
        _, record = parse_xmp(xmp) if xmp else (None, {})
        fallback = {"id": path.stem, "width": image.width, "height": image.height}
    record = {**fallback, **record}
    record["url"] = f"/api/images/{record['id']}"
    return record


def content_type(path: Path) -> str:
    """The MIME type of a saved picture, from its extension."""
    fmt = next(fmt for fmt, ext in EXTENSIONS.items() if path.suffix == f".{ext}")
    return CONTENT_TYPES[fmt]


def _day_of(image_id: str) -> str:
    """The day directory's name (YYYY-MM-DD) an id points to; it may name no real date."""
    digits = image_id[:8]
    return f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"


def _is_day(name: str) -> bool:
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return len(name) == 10
