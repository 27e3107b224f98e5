"""The local artifact store: atomic puts, checksums, no escaping the root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.errors import ArtifactNotFound, StorageError, UnsafePath
from shared.storage import LocalStore, open_store, register_store, safe_key


def test_put_bytes_and_read_back(tmp_path: Path) -> None:
    store = open_store((tmp_path / "a").as_uri())
    stored = store.put_bytes(b"hello", "x/y.txt")
    assert stored.uri == (tmp_path / "a" / "x" / "y.txt").as_uri()
    assert stored.size_bytes == 5
    assert stored.checksum == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    with store.open(stored.uri) as handle:
        assert handle.read() == b"hello"
    assert store.exists(stored.uri)


def test_put_file_and_tree(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(b"a")
    (source / "sub" / "b.bin").write_bytes(b"bb")
    single = store.put_file(source / "a.bin", "files/a.bin")
    assert store.local_path(single.uri).read_bytes() == b"a"
    tree = store.put_tree(source, "trees/t")
    assert tree.size_bytes == 3
    assert sorted(p.name for p in store.iter_files(tree.uri)) == ["a.bin", "b.bin"]
    again = store.put_tree(source, "trees/t")
    assert again.checksum == tree.checksum


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "", "a/../.."])
def test_keys_cannot_escape(key: str) -> None:
    with pytest.raises(UnsafePath):
        safe_key(key)


def test_uris_outside_the_root_are_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    (tmp_path / "secret").write_text("s")
    with pytest.raises(UnsafePath):
        store.open((tmp_path / "secret").as_uri())
    with pytest.raises(ArtifactNotFound):
        store.open(store.uri_for("missing"))
    with pytest.raises(StorageError):
        store.local_path("s3://bucket/key")


def test_unknown_schemes_are_refused_until_registered(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        open_store("s3://bucket/prefix")
    register_store("mem", lambda uri: LocalStore(tmp_path / "mem"))
    assert isinstance(open_store("mem://x"), LocalStore)
    # A bare path means a local folder.
    assert open_store(str(tmp_path / "plain")).root_uri == (tmp_path / "plain").as_uri()
