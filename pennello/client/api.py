"""A small HTTP client for a running pennello daemon (used by ``pennello generate`` and the tray).

Without a URL it finds the local daemon through the ``daemon.json`` file the daemon publishes in
its runtime directory. Talking to a daemon on this machine (loopback) without a token of its own,
it sends the owner token (:mod:`pennello.owner_token`), which only this OS user can read: that is
what makes it the owner rather than any program on the computer. Errors come back as the same :mod:`pennello.errors` the daemon raised.
A daemon serving HTTPS (LAN mode) is reached over a session pinned to its certificate's
fingerprint; :func:`pennello.client.remote.connect` finds a paired daemon on the LAN and builds one.

    >>> from pennello.client import Client
    >>> client = Client()  # doctest: +SKIP
    >>> images = client.generate("a lighthouse at dusk", seed=7, on_progress=print)  # doctest: +SKIP
    >>> images[0]["seed"], len(images[0]["bytes"]) > 0  # doctest: +SKIP
    (7, True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

from pennello.errors import (AuthError, BusyError, ConflictError, DaemonError, ForbiddenError, NotFoundError,
                             PennelloError, RequestError, TrustError)
from pennello.owner_token import is_loopback_url, read_owner_token
from pennello.paths import Paths, get_paths
from pennello.runtime import read_daemon_info

ProgressCallback = Callable[[int, int], None]  # (step, total_steps)

_ERRORS_BY_STATUS: dict[int, type[RequestError]] = {
    400: RequestError, 401: AuthError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError,
    413: RequestError}


class Client:
    """Talks to one daemon over HTTP.

    Args:
        base_url: e.g. ``http://127.0.0.1:8420``; None finds the local daemon via ``daemon.json``.
        token: a paired device token, sent as ``Authorization: Bearer``; None sends the owner
            token to a daemon on loopback (and nothing elsewhere).
        paths: where to look for ``daemon.json`` and the owner token (defaults to
            :func:`pennello.paths.get_paths`).
        timeout: seconds to wait for the daemon to answer a (non-streaming) request.
        fingerprint: ``sha256:…`` of the daemon's certificate: HTTPS then accepts only that one
            (taken from ``daemon.json`` for the local daemon).

    Raises:
        DaemonError: no URL given and no local daemon is running.
    """

    def __init__(self, base_url: str | None = None, token: str | None = None,
                 paths: Paths | None = None, timeout: float = 30.0, fingerprint: str | None = None) -> None:
        if base_url is None:
            info = read_daemon_info(paths)
            if info is None:
                raise DaemonError("pennello is not running; start it with `pennello serve`")
            base_url = info["url"]
            fingerprint = fingerprint or info.get("fingerprint")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.fingerprint = fingerprint
        if fingerprint:
            from pennello.client.discover import pinned_session

            self.session = pinned_session(fingerprint)
        else:
            self.session = requests.Session()
        if token is None and is_loopback_url(self.base_url):
            token = read_owner_token(paths or get_paths())
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/api/health")

    def progress(self) -> dict[str, Any]:
        """The running batch's progress (``GET /api/progress``: ``fraction`` and more)."""
        return self._json("GET", "/api/progress")

    def offline(self) -> dict[str, Any]:
        """The no-network report (``GET /api/offline``): mode, isolation, refused attempts."""
        return self._json("GET", "/api/offline")

    def models(self) -> list[dict[str, Any]]:
        return self._json("GET", "/api/models")["models"]

    def load_model(self, name: str, keep_alive: str | None = None) -> dict[str, Any]:
        """Load an installed model now (``POST /api/models/NAME/load``), kept loaded ``keep_alive``
        after its last use when given (``"10m"``, seconds, ``"0"``, ``"-1"``: as in Ollama)."""
        body = {"json": {"keep_alive": keep_alive}} if keep_alive is not None else {}
        return self._json("POST", f"/api/models/{name}/load", **body)

    def unload_model(self, name: str) -> dict[str, Any]:
        """Free an installed model's memory (``POST /api/models/NAME/unload``): ``name``, ``unloaded``."""
        return self._json("POST", f"/api/models/{name}/unload")

    def ps(self) -> dict[str, Any]:
        """``GET /api/ps``: loaded models (memory, keep-alive left), device, backend, memory, queue."""
        return self._json("GET", "/api/ps")

    def jobs(self, mine: bool = False) -> list[dict[str, Any]]:
        """The jobs the caller may see (``GET /api/jobs``); ``mine``: only the caller's own."""
        return self._json("GET", "/api/jobs", params={"mine": "true"} if mine else None)["jobs"]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (``DELETE /api/jobs/ID``); returns the job."""
        return self._json("DELETE", f"/api/jobs/{job_id}")

    def shutdown(self) -> dict[str, Any]:
        """Ask the daemon to stop as SIGTERM does (``POST /api/shutdown``, owner only): ``pid``."""
        return self._json("POST", "/api/shutdown")

    def pair_code(self) -> dict[str, Any]:
        """A fresh pairing code (owner only): ``code``, ``pair_url``, ``qr_png_url``,
        ``expires_in_s``, ``lan``, ``fingerprint``."""
        return self._json("POST", "/api/pair/code")

    def pair(self, code: str, device_name: str) -> dict[str, Any]:
        """Trade a pairing code for a device token: ``token``, ``id`` and ``name``.

        Raises:
            AuthError: a wrong or expired code.
        """
        return self._json("POST", "/api/pair", json={"code": code, "name": device_name})

    def download(self, path: str) -> bytes:
        """The raw body of ``GET path``, e.g. a picture or the pairing QR code."""
        return self._request("GET", path).content

    def image_bytes(self, image_id: str) -> bytes:
        return self.download(f"/api/images/{image_id}")

    def generate(self, prompt: str, on_progress: ProgressCallback | None = None,
                 **params: Any) -> list[dict[str, Any]]:
        """Generate and download pictures, following progress over server-sent events.

        Args:
            params: any field of ``POST /api/generate`` (``n``, ``seed``, ``width``, ``model``…).

        Returns:
            one dict per picture: ``id``, ``seed``, ``width``, ``height``, ``format``, ``bytes``.

        Raises:
            RequestError: the daemon refused a parameter (``field`` names it).
            BusyError: the daemon's queue is full.
            DaemonError: the daemon is unreachable, or the job failed or was cancelled.
        """
        response = self._request("POST", "/api/generate", stream=True,
                                 json={"prompt": prompt, **params, "stream": True})
        with response:
            for event, data in sse_events(response):
                if event == "progress" and on_progress:
                    on_progress(data["step"], data["total_steps"])
                elif event == "done":
                    return [{**image, "bytes": self.image_bytes(image["id"])} for image in data["images"]]
                elif event in ("failed", "cancelled"):
                    raise DaemonError(f"job {data['id']} {event}: {data.get('error') or 'no reason given'}")
        raise DaemonError("the daemon closed the event stream before the job ended")

    def upscale(self, image_id: str, scale: int, method: str = "lanczos") -> dict[str, Any]:
        """Upscale a gallery picture (``POST /api/upscale``) and download the result.

        Returns:
            the new picture as :meth:`generate` gives one, plus ``upscale`` (method, tiles, seconds).

        Raises:
            RequestError: a scale, method or size the daemon refuses (``field`` names it).
            NotFoundError: no such picture, or not one this caller may see.
        """
        fields = {"image_id": image_id, "scale": str(scale), "method": method}
        # (None, value) parts make requests send multipart form fields, which the tool routes take.
        answer = self._json("POST", "/api/upscale", files={k: (None, v) for k, v in fields.items()})
        image = answer["image"]
        return {**image, "upscale": answer["upscale"], "bytes": self.image_bytes(image["id"])}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any API call, e.g. ``call("POST", "/api/upscale", files=..., data=...)``: its JSON answer.

        Raises:
            the :mod:`pennello.errors` class of the daemon's error (as for every method here).
        """
        return self._json(method, path, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _request(self, method: str, path: str, stream: bool = False, **kwargs: Any) -> requests.Response:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=stream, **kwargs)
        except requests.ConnectionError as e:
            trust = _trust_error(e)
            if trust is not None:
                raise trust from e
            raise DaemonError(f"pennello is not reachable at {self.base_url}; is `pennello serve` "
                              f"running?") from e
        except requests.Timeout as e:
            raise DaemonError(f"pennello at {self.base_url} did not answer in {self.timeout:g}s") from e
        if response.status_code >= 400:
            raise _error_from(response)
        return response


def _trust_error(error: BaseException) -> TrustError | None:
    """The pin mismatch behind a connection error, if that is what it was."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TrustError):
            return current
        pending += [current.__cause__, current.__context__, *[a for a in current.args
                                                             if isinstance(a, BaseException)]]
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
    return None


def _error_from(response: requests.Response) -> PennelloError:
    """Rebuild the daemon's error from its JSON body."""
    try:
        error = response.json()["error"]
        message, field = str(error["message"]), error.get("field")
    except (ValueError, KeyError, TypeError):
        message, field = f"HTTP {response.status_code}: {response.text[:200]}", None
    if response.status_code == 429:
        return BusyError(message, retry_after=int(response.headers.get("Retry-After", "1")))
    cls = _ERRORS_BY_STATUS.get(response.status_code)
    return cls(message, field=field) if cls else DaemonError(message)


def sse_events(response: requests.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse a text/event-stream body into (event, JSON data) pairs; comments are skipped."""
    event, data = "message", []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def save_images(images: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Write downloaded pictures to ``directory`` as ``<id>.<ext>``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        path = directory / f"{image['id']}.{'jpg' if image['format'] == 'jpeg' else image['format']}"
        path.write_bytes(image["bytes"])
        paths.append(path)
    return paths
