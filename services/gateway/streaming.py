"""A folder sent as a tar archive while it is read: nothing held in memory but one chunk.

The archive is plain POSIX tar (PAX headers for long names), not compressed: its exact
size is known before the first byte (``Content-Length``, so clients show progress), the
first byte leaves at once, and no CPU is spent compressing checkpoints that do not
compress.  The members are the folder's regular files, in sorted order, under ``name/``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # the archive is padded to whole records, as tar writes it


@dataclass(frozen=True)
class Member:
    path: Path
    header: bytes
    size: int

    @property
    def length(self) -> int:
        return len(self.header) + _padded(self.size)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def tar_members(folder: Path, name: str) -> list[Member]:
    """The folder's regular files with their tar headers (read from the file system once)."""
    members = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        stat = path.stat()
        info = tarfile.TarInfo(f"{name}/{path.relative_to(folder).as_posix()}")
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        header = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        members.append(Member(path, header, stat.st_size))
    return members


def tar_length(members: list[Member]) -> int:
    """The archive's size in bytes: members, two zero blocks, padding to a whole record."""
    return -(-(sum(m.length for m in members) + 2 * BLOCK) // RECORD) * RECORD


def tar_stream(members: list[Member]) -> Iterator[bytes]:
    """The archive, chunk by chunk.  A file that changed size since it was listed is cut or
    zero-padded to the listed size, so the archive stays exactly ``tar_length`` long."""
    for member in members:
        yield member.header
        left = member.size
        with member.path.open("rb") as source:
            while left > 0:
                chunk = source.read(min(CHUNK, left)) or b"\0" * min(CHUNK, left)
                left -= len(chunk)
                yield chunk
        if _padded(member.size) > member.size:
            yield b"\0" * (_padded(member.size) - member.size)
    written = sum(m.length for m in members)
    yield b"\0" * (tar_length(members) - written)
