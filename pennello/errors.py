"""Pennello's exceptions: one root, a few branches, each mapped once to an exit code and an HTTP status.

Messages say what failed and what to do about it; they are shown to users as they are. Raise
with ``from e`` when wrapping a library error so the cause stays in the logs.

    >>> from pennello.errors import ExpiredManifestError
    >>> e = ExpiredManifestError("manifest 'pennello-tiny' v1 expired on 2020-01-01T00:00:00Z")
    >>> (e.exit_code, e.http_status)
    (3, 403)
"""

from __future__ import annotations

import errno


class PennelloError(Exception):
    """Root of every error pennello raises on purpose."""

    exit_code: int = 1
    http_status: int = 500
    #: Short machine-readable kind, used as ``error.type`` in HTTP responses.
    kind: str = "error"


class ConfigError(PennelloError):
    """The config file or an environment variable holds a value pennello cannot use."""

    exit_code = 2
    http_status = 500
    kind = "config"


# --- trust: manifests, signatures, keys -------------------------------------------------------

class TrustError(PennelloError):
    """A manifest or key cannot be trusted. Nothing it describes is used."""

    exit_code = 3
    http_status = 403
    kind = "trust"


class ManifestFormatError(TrustError):
    """The manifest is not well formed (missing field, bad type, unsafe path…)."""

    kind = "manifest_format"


class UnsafePathError(ManifestFormatError):
    """A manifest file path would escape the model directory (``..``, absolute, drive letter…)."""

    kind = "unsafe_path"


class UnsignedManifestError(TrustError):
    """The manifest carries no signature at all."""

    kind = "unsigned"


class BadSignatureError(TrustError):
    """A signature does not match the manifest's signed bytes: it was changed after signing."""

    kind = "bad_signature"


class UntrustedKeyError(TrustError):
    """The manifest is signed only by keys that are not in the trusted set."""

    kind = "untrusted_key"


class RevokedKeyError(TrustError):
    """A key that signed the manifest was revoked."""

    kind = "revoked_key"


class ThresholdError(TrustError):
    """Fewer valid signatures from distinct trusted keys than the policy requires."""

    kind = "threshold"


class ExpiredManifestError(TrustError):
    """The manifest's ``expires`` time has passed (protects against freeze attacks)."""

    kind = "expired"


class RollbackError(TrustError):
    """The manifest's version is lower than one already seen for that model."""

    kind = "rollback"


# --- store: files on disk ---------------------------------------------------------------------

class StoreError(PennelloError):
    """The local model store cannot do what was asked."""

    exit_code = 4
    http_status = 500
    kind = "store"


class IntegrityError(StoreError):
    """A file's size or sha256 does not match its manifest entry."""

    kind = "integrity"


class DiskSpaceError(StoreError):
    """Not enough free disk for the download, the copy or a file being written."""

    http_status = 507  # Insufficient Storage: the server's disk, not the request, is at fault
    kind = "disk_space"


class ModelNotFoundError(StoreError):
    """No model of that name is in the catalog or installed."""

    http_status = 404
    kind = "model_not_found"


class FetchError(PennelloError):
    """A download or copy from a source failed (network, HTTP status, missing file)."""

    exit_code = 5


class CommitObjectsUnavailable(FetchError):
    """The source cannot serve the git objects of the pinned commit, so no hash can be derived."""
    http_status = 502
    kind = "fetch"


# --- requests to the daemon -------------------------------------------------------------------

class RequestError(PennelloError):
    """A request to the daemon is invalid. ``field`` names the offending input when there is one."""

    exit_code = 6
    http_status = 400
    kind = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooLargeError(RequestError):
    """An upload, or what was asked to be made of it, is over a configured limit."""

    http_status = 413
    kind = "too_large"


class NotFoundError(RequestError):
    http_status = 404
    kind = "not_found"


class ConflictError(RequestError):
    """The request is fine, but the daemon's state forbids it now (another install is running;
    no-network mode is on)."""

    http_status = 409
    kind = "conflict"


class AuthError(RequestError):
    """Missing or wrong credentials."""

    http_status = 401
    kind = "unauthorized"


class ForbiddenError(RequestError):
    """Valid credentials without the right to do this."""

    http_status = 403
    kind = "forbidden"


class ConflictError(RequestError):
    """The request clashes with the daemon's state, e.g. a cluster node with another version."""

    http_status = 409
    kind = "conflict"


class HostNotAllowedError(ForbiddenError):
    """The Host header names something other than this machine (a DNS-rebinding page, or a
    name the owner has not listed)."""

    http_status = 421
    kind = "host_not_allowed"


class OriginNotAllowedError(ForbiddenError):
    """A browser page from another origin tried to change something."""

    kind = "origin_not_allowed"


class PageTokenError(ForbiddenError):
    """A browser on this machine acted as the owner without the web page's token."""

    kind = "page_token_required"


class BusyError(PennelloError):
    """The daemon is at capacity; try again after ``retry_after`` seconds."""

    exit_code = 7
    http_status = 429
    kind = "busy"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DaemonError(PennelloError):
    """The daemon is not running, or cannot be reached, or is already running."""

    exit_code = 8
    http_status = 503
    kind = "daemon"


class OfflineViolationError(PennelloError, PermissionError):
    """A network connection was attempted while no-network mode forbids it.

    It is also a ``PermissionError`` (errno ``EPERM``, what a firewall answers), so libraries that
    handle an unreachable network — urllib3, httpx, huggingface_hub's cache fallback — treat a
    refused attempt as exactly that instead of crashing on an unknown exception.
    """

    exit_code = 9
    http_status = 503
    kind = "offline_violation"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EPERM


class ConsentError(PennelloError):
    """The user said no, or could not be asked (no terminal and no ``--yes``). Nothing was done."""

    exit_code = 10
    http_status = 409
    kind = "consent"
