"""Copyright check: compare pictures with a folder of protected works by perceptual hashes.

Set ``[copyright] reference_dir`` to a folder of pictures (PNG, JPEG, WebP, BMP, GIF, TIFF;
sub-folders included). Every picture pennello saves is then compared with each of them by two
64-bit perceptual hashes, and a close match is *flagged* — in the response, in the picture's
embedded record and so in the gallery — never dropped. See docs/copyright-check.md for what this
can and cannot catch.

* **pHash**: the signs of the 8x8 lowest frequencies of a 32x32 grayscale DCT against their median;
  robust to resizing, recompression, small colour and brightness changes.
* **dHash**: whether each pixel of a 9x8 grayscale thumbnail is brighter than its right-hand
  neighbour; robust to the same, and sensitive to a different layout.

A picture matches a reference when *both* hashes differ in at most ``max_distance`` bits (of 64),
for the picture or its mirror image.

    >>> from PIL import Image
    >>> picture = Image.linear_gradient("L").rotate(30).convert("RGB")
    >>> [distance(a, b) <= 4 for a, b in zip(hashes(picture), hashes(picture.resize((100, 100))))]
    [True, True]
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

REFERENCE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
RESCAN_S = 10.0  # the folder is re-listed at most this often (only new or changed files are hashed)
MAX_REFERENCE_PIXELS = 64 * 1024 * 1024  # a bigger reference file is skipped (and logged)
MAX_MATCHES = 5  # matches listed per picture, closest first
_DCT_SIZE, _LOW = 32, 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    matrix = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    matrix[0] /= np.sqrt(2)
    return matrix * np.sqrt(2 / n)


_DCT = _dct_matrix(_DCT_SIZE)


def _bits(flags: np.ndarray) -> int:
    return int("".join("1" if flag else "0" for flag in flags.ravel()), 2)


def phash(image: Image.Image) -> int:
    gray = np.asarray(image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS),
                      dtype=np.float64)
    low = (_DCT @ gray @ _DCT.T)[:_LOW, :_LOW]
    return _bits(low > np.median(low))


def dhash(image: Image.Image) -> int:
    gray = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    return _bits(gray[:, 1:] > gray[:, :-1])


def hashes(image: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) of a picture."""
    return phash(image), dhash(image)


def distance(a: int, b: int) -> int:
    """Hamming distance: how many of the 64 bits differ."""
    return (a ^ b).bit_count()


@dataclass
class _Reference:
    name: str  # path relative to the folder
    stamp: tuple[float, int]  # mtime, size: rehash when either changes
    phash: int
    dhash: int


class ReferenceIndex:
    """The hashes of a folder of protected works, kept up to date as files come and go."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._refs: dict[str, _Reference] = {}
        self._scanned = 0.0
        self._lock = threading.Lock()
        self.skipped: list[str] = []  # files that could not be read, for the status route

    def references(self) -> list[_Reference]:
        with self._lock:
            if time.monotonic() - self._scanned >= RESCAN_S:
                self._scan()
            return list(self._refs.values())

    def rescan(self) -> int:
        with self._lock:
            self._scan()
            return len(self._refs)

    def _scan(self) -> None:
        started = time.perf_counter()
        seen: dict[str, _Reference] = {}
        skipped = []
        files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in REFERENCE_SUFFIXES
                       and p.is_file()) if self.folder.is_dir() else []
        for path in files:
            name = path.relative_to(self.folder).as_posix()
            stat = path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            known = self._refs.get(name)
            if known is not None and known.stamp == stamp:
                seen[name] = known
                continue
            try:
                with Image.open(path) as image:
                    if image.width * image.height > MAX_REFERENCE_PIXELS:
                        raise ValueError(f"{image.width}x{image.height} is over {MAX_REFERENCE_PIXELS} pixels")
                    picture = ImageOps.exif_transpose(image).convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                log.warning("copyright check: skipping reference %s: %s", path, e)
                skipped.append(name)
                continue
            seen[name] = _Reference(name, stamp, *hashes(picture))
        self._refs, self.skipped, self._scanned = seen, skipped, time.monotonic()
        log.debug("copyright references: %d in %s (%.1fms)", len(seen), self.folder,
                  (time.perf_counter() - started) * 1000)

    def check(self, image: Image.Image, max_distance: int) -> dict[str, Any]:
        """Compare a picture (and its mirror image) with every reference.

        Returns:
            ``{"flagged", "references", "max_distance", "matches": [{"reference",
            "phash_distance", "dhash_distance", "mirrored"}]}``, closest matches first.
        """
        references = self.references()
        candidates = [(False, hashes(image)), (True, hashes(ImageOps.mirror(image)))]
        matches = []
        for ref in references:
            best = min(((distance(p, ref.phash), distance(d, ref.dhash), mirrored)
                        for mirrored, (p, d) in candidates), key=lambda t: t[0] + t[1])
            if best[0] <= max_distance and best[1] <= max_distance:
                matches.append({"reference": ref.name, "phash_distance": best[0],
                                "dhash_distance": best[1], "mirrored": best[2]})
        matches.sort(key=lambda m: (m["phash_distance"] + m["dhash_distance"], m["reference"]))
        return {"flagged": bool(matches), "references": len(references), "max_distance": max_distance,
                "matches": matches[:MAX_MATCHES]}


def index_for(engine: Any) -> ReferenceIndex:
    """The engine's index of ``[copyright] reference_dir`` (built on first use).

    Raises:
        NotFoundError: the copyright check is not configured.
    """
    from pennello.errors import NotFoundError

    folder = engine.config.copyright.reference_dir
    if not folder:
        raise NotFoundError("the copyright check is off; set [copyright] reference_dir in config.toml "
                            "to a folder of protected pictures")
    index = engine.extensions.get("copyright")
    if index is None or index.folder != Path(folder).expanduser():
        index = engine.extensions["copyright"] = ReferenceIndex(Path(folder).expanduser())
    return index


def check_image(engine: Any, image: Image.Image) -> dict[str, Any]:
    """The copyright note for one picture (the post-step in :mod:`.poststeps`)."""
    note = index_for(engine).check(image, engine.config.copyright.max_distance)
    if note["flagged"]:
        log.warning("copyright check: picture resembles %s", ", ".join(m["reference"] for m in note["matches"]))
    return note
