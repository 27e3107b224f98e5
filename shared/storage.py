"""The artifact store: files addressed by URI.

``file://`` URIs live in a local folder (embedded mode, a compose volume, a Kubernetes
PVC).  Other schemes plug in through :func:`register_store`; an S3-compatible store is a
class with the same five methods.  Keys are relative, '/'-separated, and may never leave
the store's root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from shared.errors import ArtifactNotFound, StorageError, UnsafePath


@dataclass(frozen=True)
class StoredObject:
    """What a put returns: where the object lives, how big it is, its checksum."""

    uri: str
    size_bytes: int
    checksum: str


class ArtifactStore(Protocol):
    root_uri: str

    def put_file(self, source: Path, key: str) -> StoredObject: ...
    def put_bytes(self, data: bytes, key: str) -> StoredObject: ...
    def put_tree(self, source: Path, key: str) -> StoredObject: ...
    def uri_for(self, key: str) -> str: ...
    def open(self, uri: str) -> BinaryIO: ...
    def iter_files(self, uri: str) -> Iterator[Path]: ...
    def local_path(self, uri: str) -> Path: ...
    def exists(self, uri: str) -> bool: ...


def path_from_uri(ref: str) -> Path:
    """The local path a reference names: a ``file://`` URI or a plain path."""
    if ref.startswith("file:"):
        return Path(unquote(urlparse(ref).path))
    return Path(ref)


def safe_key(key: str) -> str:
    """Normalise a relative key, refusing absolute paths and '..' escapes."""
    path = PurePosixPath(key.replace("\\", "/"))
    if path.is_absolute() or not key or any(part in ("..", "") for part in path.parts):
        raise UnsafePath(f"artifact key {key!r} must be a relative path inside the store")
    return str(path)


def sha256_file(path: Path) -> str:
    """'sha256:<hex>' of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class LocalStore:
    """A folder on a local or mounted file system."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root_uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def uri_for(self, key: str) -> str:
        """The URI an object stored under ``key`` has."""
        return self._path(key).as_uri()

    def put_file(self, source: Path, key: str) -> StoredObject:
        """Copy a file (or link it when on the same file system) under ``key``."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return StoredObject(target.as_uri(), target.stat().st_size, sha256_file(target))

    def put_bytes(self, data: bytes, key: str) -> StoredObject:
        """Write bytes atomically under ``key``."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return StoredObject(
            target.as_uri(), len(data), f"sha256:{hashlib.sha256(data).hexdigest()}"
        )

    def put_tree(self, source: Path, key: str) -> StoredObject:
        """Copy a folder (a checkpoint, an export) under ``key``; checksum over its files."""
        target = self._path(key)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        digest = hashlib.sha256()
        size = 0
        for path in sorted(p for p in target.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(target)).encode())
            digest.update(sha256_file(path).encode())
            size += path.stat().st_size
        return StoredObject(target.as_uri(), size, f"sha256:{digest.hexdigest()}")

    def local_path(self, uri: str) -> Path:
        """The file behind a URI of this store; refuses URIs outside the root."""
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise StorageError(f"not a file URI: {uri}", uri=uri)
        path = Path(unquote(parsed.path)).resolve()
        if path != self.root and self.root not in path.parents:
            raise UnsafePath(f"URI {uri} is outside the artifact store", uri=uri)
        return path

    def open(self, uri: str) -> BinaryIO:
        """Open a stored file for reading."""
        path = self.local_path(uri)
        if not path.is_file():
            raise ArtifactNotFound(uri=uri)
        return path.open("rb")

    def exists(self, uri: str) -> bool:
        """Whether an object exists."""
        return self.local_path(uri).exists()

    def iter_files(self, uri: str) -> Iterator[Path]:
        """Every file under a stored folder."""
        yield from (p for p in self.local_path(uri).rglob("*") if p.is_file())


StoreFactory = Callable[[str], ArtifactStore]
_FACTORIES: dict[str, StoreFactory] = {
    "file": lambda uri: LocalStore(path_from_uri(uri)),
}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Make ``open_store`` understand another URI scheme (e.g. ``s3``)."""
    _FACTORIES[scheme] = factory


def open_store(root_uri: str) -> ArtifactStore:
    """The store rooted at ``root_uri`` (``file:///...`` or a registered scheme)."""
    scheme = urlparse(root_uri).scheme or "file"
    if scheme not in _FACTORIES:
        raise StorageError(f"no artifact store for scheme {scheme!r}", uri=root_uri)
    if scheme == "file" and not root_uri.startswith("file:"):
        root_uri = Path(root_uri).resolve().as_uri()
    return _FACTORIES[scheme](root_uri)
