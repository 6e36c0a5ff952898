"""What a repository's files must hash to, derived from the git objects of one signed commit.

A shipped manifest for a Hub model signs ``repo`` at a full 40-hex ``revision``. A git commit
id is a Merkle root: it is the sha1 of the commit object, which names its tree by id, which
names every subtree and file blob by id. A small file's blob *is* its content; a large file is
stored as a Git LFS pointer blob holding the file's sha256 and size. So one signed commit id
fixes the sha256 and size of every file, without a published hash list and without taking the
Hub's word for what the commit holds.

This module fetches the commit's own objects over git's smart-HTTP protocol with dulwich (a
shallow fetch of that one commit: its tree, subtrees and blobs, no history), re-hashes every
object it uses itself (never trusting refs or the server's listing), and returns each file's
expected sha256 and size. Small files arrive inside the fetch: their bytes are kept, so they
are never downloaded twice. Large files are downloaded afterwards by the ordinary fetcher and
checked against the pointer's sha256 by the store, like any signed hash.

Only the fetching side imports this (:mod:`pennello.installer.sources`); the daemon never does.

    >>> git_blob_id(b"")
    'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
    >>> lfs_pointer(b"version https://git-lfs.github.com/spec/v1\\noid sha256:" + b"ab" * 32
    ...             + b"\\nsize 12\\n")
    ('abababababababababababababababababababababababababababababababab', 12)
"""

from __future__ import annotations

import hashlib
import logging
import re
import stat
from dataclasses import dataclass, field
from io import BytesIO
from typing import Callable

import urllib3
from dulwich.client import HTTPUnauthorized, Urllib3HttpGitClient
from dulwich.errors import GitProtocolError, NotGitRepository
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, Commit, ShaFile, Tree, object_header
from dulwich.pack import write_pack_objects
from dulwich.repo import MemoryRepo

from pennello.errors import CommitObjectsUnavailable, FetchError, IntegrityError
from pennello.installer.manifest import FileEntry, check_relative_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommitFiles:
    """An unlocked manifest's files, with hashes derived from the git objects of its commit."""

    files: tuple[FileEntry, ...]
    objects: bytes  # those git objects as a pack: kept, so a bundle can derive the hashes again
    contents: dict[str, bytes] = field(default_factory=dict)  # sha256 -> bytes that came with them

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# The Git LFS specification: a pointer is under 1024 bytes, these three keys in this order.
_LFS_MAX = 1024
_LFS_RE = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\n"
                     rb"oid sha256:([0-9a-f]{64})\n"
                     rb"size (0|[1-9][0-9]{0,18})\n$")
# Servers that understand partial clone then leave out big non-LFS blobs; they are downloaded
# over HTTP instead and checked against their blob id (see CommitFile.content).
_FILTER = b"blob:limit=1m"


@dataclass(frozen=True)
class CommitFile:
    """One regular file of the signed commit, as its git objects describe it.

    ``sha256`` and ``size`` are known for LFS files (from the pointer) and for blobs that came
    with the fetch (``content`` holds their bytes). A blob the server left out (partial clone)
    has only ``git_id``: its bytes must be fetched and hash to it.
    """

    path: str
    git_id: str
    lfs: bool
    sha256: str | None = None
    size: int | None = None
    content: bytes | None = None


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob holding ``data``: sha1 of ``b"blob <size>\\0" + data``."""
    return hashlib.sha1(object_header(Blob.type_num, len(data)) + data).hexdigest()


def lfs_pointer(data: bytes) -> tuple[str, int] | None:
    """(sha256, size) if ``data`` is a Git LFS pointer, else None."""
    if len(data) >= _LFS_MAX:
        return None
    match = _LFS_RE.match(data)
    return (match.group(1).decode(), int(match.group(2))) if match else None


def fetch_commit(endpoint: str, repo: str, commit: str, token: str | None = None,
                 timeout: float | None = None) -> BaseObjectStore:
    """The objects of ``commit`` from the git repository ``endpoint/repo`` (shallow, that commit only).

    Args:
        token: sent as the basic-auth password (the Hub's way for gated repositories), and
            only to ``endpoint``'s origin (dulwich does not carry it across a redirect).
        timeout: seconds of silence before a request fails.

    Raises:
        CommitObjectsUnavailable: no git repository there, the server refused, or it lacks the commit.
        FetchError: the server could not be reached at all.
    """
    if not _COMMIT_RE.match(commit):
        raise IntegrityError(f"revision {commit!r} is not a full 40-hex commit id; refused")
    url, path = f"{endpoint}/{repo}", f"/{repo}"
    client = Urllib3HttpGitClient(endpoint, timeout=timeout, username="pennello" if token else None,
                                  password=token)
    target = MemoryRepo()
    try:
        # Want exactly the signed id, whatever the refs say: refs are the server's word.
        client.fetch(path, target, determine_wants=lambda refs, depth=None: [commit.encode()],
                     depth=1, filter_spec=_FILTER)
    except (GitProtocolError, NotGitRepository, HTTPUnauthorized, OSError) as e:
        if isinstance(e.__cause__, urllib3.exceptions.MaxRetryError):  # no answer at all, not a refusal
            raise FetchError(f"cannot reach {url} ({e.__cause__.reason}); no network? On a machine "
                             f"without internet install from a bundle made elsewhere: `pennello bundle "
                             f"export NAME --out DIR` there, `pennello install --from DIR` here") from e
        raise CommitObjectsUnavailable(f"{url} does not serve the git objects of commit {commit} "
                                    f"({type(e).__name__}: {e or 'no git repository there'})") from e
    return target.object_store


def pack(store: BaseObjectStore) -> bytes:
    """Every object in ``store`` as one git pack: kept with the model, carried in bundles."""
    out = BytesIO()
    write_pack_objects(out.write, [store[object_id] for object_id in store], object_format=store.object_format)
    return out.getvalue()


def unpack(data: bytes, where: str) -> BaseObjectStore:
    """The objects of a pack made by :func:`pack` (each is re-hashed when it is read).

    Raises:
        IntegrityError: the pack is damaged.
    """
    store = MemoryRepo().object_store
    write, commit, abort = store.add_pack()
    try:
        write.write(data)
        commit()
    except (ValueError, AssertionError, GitProtocolError) as e:  # dulwich's ways of saying "not a pack"
        abort()
        raise IntegrityError(f"{where}: the commit's git objects are damaged ({e}); refused") from e
    return store


def select_files(found: list[CommitFile], wanted: list[str], objects: bytes,
                 fetch_blob: Callable[[CommitFile], bytes]) -> CommitFiles:
    """The manifest entries of the ``wanted`` files, with the bytes already had (small files).

    ``fetch_blob`` gets a blob the objects left out; it must check the bytes against the id.
    """
    entries, kept, chosen = [], {}, set(wanted)
    for file in (f for f in found if f.path in chosen):
        if file.lfs and file.sha256 is not None and file.size is not None:
            entries.append(FileEntry(file.path, file.sha256, file.size))  # downloaded later, checked then
            continue
        content = file.content if file.content is not None else fetch_blob(file)
        entries.append(FileEntry(file.path, hashlib.sha256(content).hexdigest(), len(content)))
        kept[entries[-1].sha256] = content
    return CommitFiles(tuple(entries), objects, kept)


def commit_files(store: BaseObjectStore, commit: str, where: str) -> list[CommitFile]:
    """Every regular file of ``commit``, walking commit → tree → subtrees → blobs in ``store``.

    Each object is re-hashed here and must hash to the id its parent names, starting from the
    signed commit id. ``where`` names the source in messages.

    Raises:
        IntegrityError: an object is missing or does not hash to its id, or a pointer is malformed.
    """
    root = _object(store, commit, Commit, f"{where}: commit {commit}")
    assert isinstance(root, Commit)
    files: list[CommitFile] = []
    pending = [("", root.tree.decode())]
    while pending:
        prefix, tree_id = pending.pop()
        tree = _object(store, tree_id, Tree, f"{where}: tree {prefix or '/'} of commit {commit}")
        assert isinstance(tree, Tree)
        for entry in tree.iteritems():
            path = prefix + entry.path.decode("utf-8", "replace")
            if stat.S_ISDIR(entry.mode):
                pending.append((path + "/", entry.sha.decode()))
            elif stat.S_ISREG(entry.mode):
                files.append(_file(store, check_relative_path(path), entry.sha.decode(), where))
            else:  # a symbolic link or submodule: not a file a pipeline loads
                log.info("%s: %s is not a regular file in the commit; skipped", where, path)
    return sorted(files, key=lambda f: f.path)


def _file(store: BaseObjectStore, path: str, blob_id: str, where: str) -> CommitFile:
    if not _present(store, blob_id):
        return CommitFile(path, blob_id, lfs=False)  # left out by the filter: fetched over HTTP
    data = _object(store, blob_id, Blob, f"{where}: {path} (git blob {blob_id})").as_raw_string()
    pointer = lfs_pointer(data)
    if pointer is not None:
        return CommitFile(path, blob_id, lfs=True, sha256=pointer[0], size=pointer[1])
    return CommitFile(path, blob_id, lfs=False, sha256=hashlib.sha256(data).hexdigest(),
                      size=len(data), content=data)


def _present(store: BaseObjectStore, object_id: str) -> bool:
    return object_id.encode() in store


def _object(store: BaseObjectStore, object_id: str, kind: type[ShaFile], what: str) -> ShaFile:
    """The object ``object_id`` of type ``kind``, after hashing its bytes ourselves."""
    try:
        type_num, raw = store.get_raw(object_id.encode())
    except KeyError:
        raise IntegrityError(f"{what}: the source sent no git object that hashes to {object_id} "
                             f"(it serves other objects than the signed commit names); refused") from None
    actual = hashlib.sha1(object_header(type_num, len(raw)) + raw).hexdigest()
    if actual != object_id or type_num != kind.type_num:
        raise IntegrityError(f"{what}: expected a {kind.type_name.decode()} hashing to {object_id}, got "
                             f"an object hashing to {actual}; refused")
    return ShaFile.from_raw_string(type_num, raw)
