"""Fuzzing with files as the world makes them: pictures with metadata, and hostile JSON text.

schemathesis (tests/test_fuzz.py) fuzzes from the description, which knows a picture only as
"bytes". Here hypothesis builds what cameras, editors and attackers send: PNG, JPEG and WebP with
text chunks, XMP, ICC profiles and EXIF, metadata truncated or oversized, files cut short, and
decompression bombs (a small file whose header claims a billion pixels). Each goes to every
route that takes a picture, as a file or as A1111's base64. JSON bodies get what breaks
parsers: deep nesting, large bodies, lone surrogates, NUL, right-to-left marks and very long
grapheme clusters, at the top level and in every field of every JSON route.

The rule is the one of the whole API: never a 5xx, and the daemon stays healthy. The runs are
bounded for CI: a fixed number of examples, derandomized (the same cases every run), under a
minute on two slow cores. The daemon is bench/fuzz_api.py's (small limits, the embedded model).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import requests
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, PngImagePlugin

from pennello.daemon.http.openapi import build_spec
from test_fuzz import CONFIG, daemon, fuzz_api  # noqa: F401  (the shared fuzz daemon)

UPLOAD_EXAMPLES = 10  # per route
JSON_EXAMPLES = 8  # per route


def bounded(examples: int) -> settings:
    """The same ``examples`` cases every run, however slow the machine, leaving no database."""
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- pictures with real-world metadata -----------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=64)
_XMP = st.sampled_from([b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF/></x:xmpmeta>", b"<x:xmpmeta",
                        b"<?xpacket begin='\xef\xbb\xbf'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><x>&a;&a;</x>",
                        b"\x00\xff" * 40, "<x>\u202e\u0000</x>".encode()])


def _icc(draw: st.DrawFn) -> bytes:
    from PIL import ImageCms

    if draw(st.booleans()):
        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return draw(st.binary(min_size=0, max_size=300))  # a profile that is not one


def _exif(draw: st.DrawFn) -> bytes:
    exif = Image.Exif()
    exif[0x010E] = draw(_TEXT)  # ImageDescription
    exif[0x0112] = draw(st.integers(0, 65535))  # Orientation, sane or not
    exif[0x9286] = draw(st.binary(max_size=200))  # UserComment, raw bytes
    return exif.tobytes()


@st.composite
def pictures(draw: st.DrawFn) -> bytes:
    """One picture file: a real encoding with metadata, then perhaps cut short or inflated."""
    mode = draw(st.sampled_from(["RGB", "RGBA", "L", "P"]))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    picture = Image.new(mode, size, draw(st.integers(0, 255)))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        picture = picture.convert("RGB")
    options: dict = {"exif": _exif(draw)} if draw(st.booleans()) else {}
    if draw(st.booleans()) and picture.mode != "P":
        options["icc_profile"] = _icc(draw)
    if draw(st.booleans()):
        options["xmp"] = draw(_XMP)
    if fmt == "PNG":
        chunks = PngImagePlugin.PngInfo()
        for key in draw(st.lists(st.sampled_from(["parameters", "Comment", "prompt", "XML:com.adobe.xmp"]),
                                 max_size=3)):
            chunks.add_itxt(key, draw(_TEXT) * draw(st.sampled_from([1, 1, 2000])), zip=draw(st.booleans()))
        options["pnginfo"] = chunks
    out = io.BytesIO()
    picture.save(out, format=fmt, **options)
    data = out.getvalue()
    mutation = draw(st.sampled_from(["none", "none", "truncate", "bomb", "garbage"]))
    if mutation == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if mutation == "bomb":
        return _png_bomb(draw(st.sampled_from([30000, 65535, 2 ** 31 - 1])))
    if mutation == "garbage":
        return data + draw(st.binary(min_size=1, max_size=2000))
    return data


def _png_bomb(side: int) -> bytes:
    """A PNG of a few hundred bytes whose header claims ``side`` x ``side`` pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compress(b"\0" * 4096, 9)  # the first bytes only: a decoder must refuse before it reads on
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _upload(url: str, route: str, picture: bytes) -> requests.Response:
    """``picture`` sent to ``route`` the way its clients send one."""
    if route in ("/sdapi/v1/img2img", "/sdapi/v1/png-info"):
        encoded = base64.b64encode(picture).decode()
        body = ({"init_images": [encoded], "prompt": "a kite", "steps": 2, "width": 64, "height": 64}
                if route.endswith("img2img") else {"image": "data:image/png;base64," + encoded})
        return requests.post(url + route, json=body, timeout=120)
    fields = {"prompt": (None, "a kite"), "steps": (None, "2"), "width": (None, "64"), "height": (None, "64")}
    fields = {k: v for k, v in fields.items() if route in ("/api/edit", "/v1/images/edits") or k == "prompt"}
    if route.startswith("/v1"):
        fields.pop("steps"), fields.pop("width"), fields.pop("height")
        fields["size"] = (None, "64x64")
    return requests.post(url + route, files={"image": ("upload.bin", picture), **fields}, timeout=120)


UPLOAD_ROUTES = ["/api/edit", "/api/upscale", "/api/enhance", "/api/copyright/check", "/v1/images/edits",
                 "/sdapi/v1/img2img", "/sdapi/v1/png-info"]


def _no_server_error(response: requests.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:  # a clear error naming the problem, as JSON
        assert response.headers["Content-Type"].startswith("application/json"), response.headers
        assert response.json(), response.text


def test_every_upload_route_takes_real_world_pictures_without_a_server_error(daemon):  # noqa: F811
    for route in UPLOAD_ROUTES:
        @bounded(UPLOAD_EXAMPLES)
        @given(picture=pictures())
        def one(picture: bytes) -> None:
            _no_server_error(_upload(daemon, route, picture))

        one()
    assert requests.get(f"{daemon}/api/health", timeout=10).json()["ready"]


def test_a_decompression_bomb_is_a_4xx_on_every_upload_route(daemon):  # noqa: F811
    for route in UPLOAD_ROUTES:
        response = _upload(daemon, route, _png_bomb(65535))
        assert 400 <= response.status_code < 500, (route, response.status_code, response.text[:300])


# --- hostile JSON ----------------------------------------------------------------------------------

_EDGE = st.sampled_from(["\ud800", "a\udfffb", "\x00", "nul\x00inside", "\u200f\u202eevil\u202c", "\ufeff",
                         "e" + "\u0301" * 5000, "\U0001F468\u200d" * 800 + "\U0001F468", "\u0000" * 100,
                         "x" * 200_000])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70),
                     st.floats(allow_nan=False), _EDGE, st.text(max_size=20))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                       max_leaves=12)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def bodies(draw: st.DrawFn, fields: list[str]) -> bytes:
    """A JSON body: a valid-looking object with one field made hostile, a hostile value at the
    top, or nesting far past what any route takes."""
    kind = draw(st.sampled_from(["field", "field", "top", "deep"]))
    if kind == "deep":
        return ('{"prompt": ' + _deep(draw(st.sampled_from([64, 1000, 100_000]))) + "}").encode()
    if kind == "top":
        return json.dumps(draw(_VALUES)).encode()
    body = {"prompt": "a kite", "steps": 2, "width": 64, "height": 64}
    body[draw(st.sampled_from(fields or ["prompt"]))] = draw(st.one_of(_EDGE, _VALUES))
    return json.dumps(body).encode()  # lone surrogates go out as "\\ud800", as any JSON client sends them


def _json_routes() -> list[tuple[str, str, list[str]]]:
    spec = build_spec(CONFIG)
    routes = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            schema = content["application/json"].get("schema", {})
            name = schema.get("$ref", "").rsplit("/", 1)[-1]
            properties = spec["components"]["schemas"].get(name, schema).get("properties", {})
            routes.append((method.upper(), path.replace("{name}", "fuzzed"), sorted(properties)))
    return routes


def test_every_json_route_takes_hostile_text_without_a_server_error(daemon):  # noqa: F811
    routes = _json_routes()
    assert len(routes) >= 10, routes
    for method, path, fields in routes:
        @bounded(JSON_EXAMPLES)
        @given(body=bodies(fields))
        def one(body: bytes) -> None:
            response = requests.request(method, daemon + path, data=body, timeout=120,
                                        headers={"Content-Type": "application/json"})
            _no_server_error(response)

        one()
    assert requests.get(f"{daemon}/api/health", timeout=10).json()["ready"]
