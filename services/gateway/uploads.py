"""Dataset uploads: a ``multipart/form-data`` body streamed into the artifact store.

The body is parsed as it arrives by python-multipart (the parser Starlette uses), and the
file part is written straight into ``uploads/<team>/<uuid>/`` in the store, one chunk at a
time.  Starlette's own form parsing would first spool the file to a temporary file on the
server's local disk (a second copy, up to ``max_upload_bytes`` of it) and could stop an
oversized upload only once it was whole; here one goes over the limit and is cut off.

An archive (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``) is unpacked in the upload folder
member by member; a link, a device, an absolute path or a ``..`` fails the upload.  The
data file is then registered like any other, with the upload folder as its only import
root, so row images may not reach outside it.  On any failure the folder is removed.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NoReturn

from anyio import to_thread
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session

from shared import datasets
from shared.contracts.api import DatasetCreate, RowError
from shared.db.models import Dataset, Team
from shared.errors import InvalidInput, PayloadTooLarge, UnsafePath
from shared.storage import ArtifactStore

FILE_FIELD = "file"
MAX_FIELDS = 16
MAX_FIELD_BYTES = 64 * 1024
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".zip")
# What an archive's data file may be called (``.json`` is left out: an archive may well
# hold other JSON files, and the one data file must be unambiguous).
DATA_SUFFIXES = (".jsonl", ".ndjson", ".parquet", ".pq")


def too_large(size: int | None, limit: int) -> PayloadTooLarge:
    """The 413 for an upload over the limit."""
    what = f"{size} bytes" if size is not None else "over the limit"
    return PayloadTooLarge(f"the upload is {what}; the limit is {limit} bytes", limit=limit)


def check_length(request: Request, limit: int) -> None:
    """Refuse at once an upload whose declared length is over the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)


@dataclass
class Received:
    """An upload's form fields and its file, stored under ``folder``."""

    folder: Path
    fields: dict[str, str] = field(default_factory=dict)
    file: Path | None = None
    file_began: bool = False
    pending: list[bytes] = field(default_factory=list)
    _handle: BinaryIO | None = None
    _headers: dict[bytes, bytes] = field(default_factory=dict)
    _header: tuple[bytes, bytes] = (b"", b"")
    _field: str | None = None
    _value: bytearray = field(default_factory=bytearray)

    # python-multipart callbacks (called inside ``parser.write``, on the event loop: they
    # only keep bytes; the file is written in a thread by ``flush``).

    def on_part_begin(self) -> None:
        self._headers, self._field, self._value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def on_header_end(self) -> None:
        self._headers[self._header[0].lower()] = self._header[1]
        self._header = (b"", b"")

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise InvalidInput("a form part has no name in its Content-Disposition header")
        name = _text(options[b"name"], "a form field name")
        if b"filename" not in options:
            self._start_field(name)
            return
        if name != FILE_FIELD or self.file_began:
            raise InvalidInput(f"send one file, as the form field {FILE_FIELD!r}", field=name)
        self.file_began = True
        self.file = self.folder / safe_file_name(_text(options[b"filename"], "the file name"))

    def _start_field(self, name: str) -> None:
        if name == FILE_FIELD:
            raise InvalidInput(f"form field {name!r} must be a file (curl: -F {name}=@path)")
        if name in self.fields:
            raise InvalidInput(f"form field {name!r} is given more than once", field=name)
        if len(self.fields) >= MAX_FIELDS:
            raise InvalidInput(f"more than {MAX_FIELDS} form fields")
        self._field = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is None:
            self.pending.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidInput(
                f"form field {self._field!r} is over {MAX_FIELD_BYTES} bytes", field=self._field
            )

    def on_part_end(self) -> None:
        if self._field is not None:
            self.fields[self._field] = _text(bytes(self._value), f"form field {self._field!r}")

    # the file, written outside the event loop

    def flush(self) -> None:
        """Append the file bytes parsed so far to the stored file."""
        assert self.file is not None
        if self._handle is None:
            self._handle = self.file.open("wb")
        self._handle.write(b"".join(self.pending))
        self.pending.clear()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 text") from exc
    if "\x00" in text:
        raise InvalidInput(f"NUL characters are not allowed in {what}")
    return text


def safe_file_name(name: str) -> str:
    """The uploaded file's base name, reduced to characters safe in any file system."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(name.replace("\\", "/")).name)
    return base.lstrip(".") or "upload"


async def receive(
    request: Request, folder: Path, *, limit: int, check: Callable[[dict[str, str]], None]
) -> Received:
    """Parse the multipart body as it arrives, the file part written into ``folder``;
    ``check`` sees the fields sent before the file, before any of the file is stored."""
    _, params = parse_options_header(request.headers.get("content-type"))
    if not params.get(b"boundary"):
        raise InvalidInput("a multipart/form-data body needs a boundary in its Content-Type")
    received = Received(folder)
    callbacks: Any = {
        "on_part_begin": received.on_part_begin,
        "on_part_data": received.on_part_data,
        "on_part_end": received.on_part_end,
        "on_header_field": received.on_header_field,
        "on_header_value": received.on_header_value,
        "on_header_end": received.on_header_end,
        "on_headers_finished": received.on_headers_finished,
    }
    size, checked = 0, False
    try:
        parser = MultipartParser(params[b"boundary"], callbacks)
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(None, limit)
            parser.write(chunk)
            if received.file_began and not checked:
                await to_thread.run_sync(check, dict(received.fields))
                checked = True
            if received.pending:
                await to_thread.run_sync(received.flush)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidInput(f"the body is not valid multipart/form-data: {exc}") from exc
    finally:
        received.close()
    if received.file is None:
        raise InvalidInput(f"the upload has no file: send it as the form field {FILE_FIELD!r}")
    if not received.file.exists():
        received.file.touch()  # an empty file part: the format check says what is wrong
    return received


def upload_request(fields: dict[str, str], path: Path) -> DatasetCreate:
    """The form fields as a registration of ``path``, under DatasetCreate's rules (the same
    422 messages as a JSON body)."""
    if "path" in fields:
        raise InvalidInput("an upload takes no 'path' field: the uploaded file is the dataset")
    data: dict[str, Any] = {**fields, "path": str(path)}
    if "columns" in fields:
        try:
            data["columns"] = json.loads(fields["columns"])
        except json.JSONDecodeError as exc:
            error = {"type": "json_invalid", "loc": ("body", "columns"), "msg": exc.msg}
            raise RequestValidationError([error]) from exc
    try:
        return DatasetCreate.model_validate(data)
    except ValidationError as exc:
        raise body_error(exc) from exc


def body_error(exc: ValidationError) -> RequestValidationError:
    """A body's validation errors as FastAPI reports those of a declared body (the app
    turns them into the platform's 422)."""
    errors = exc.errors(include_url=False)
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def is_archive(path: Path) -> bool:
    """Whether the uploaded file is an archive, by its name."""
    return path.name.lower().endswith(ARCHIVES)


def unpack(archive: Path, into: Path, *, limit: int) -> None:
    """Unpack a tar (plain or compressed) or zip archive into ``into``, refusing any member
    that is not a plain file or folder or whose path leaves ``into``, and any archive whose
    files add up to more than ``limit`` bytes."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _unzip(archive, into, limit)
        else:
            _untar(archive, into, limit)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InvalidInput(f"{archive.name} is not a readable archive: {exc}") from exc


def _untar(archive: Path, into: Path, limit: int) -> None:
    total = 0
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.issym() or member.islnk():
                _refuse(member.name, "a link")
            elif not (member.isfile() or member.isdir()):
                _refuse(member.name, "a device or special file")
            _check_member_path(member.name)
            total += member.size
            if total > limit:
                raise PayloadTooLarge(f"the archive unpacks to more than {limit} bytes")
            tar.extract(member, into, filter="data")


def _unzip(archive: Path, into: Path, limit: int) -> None:
    total = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            # The Unix file type, when the archiver wrote one (0: none, a plain member).
            file_type = stat.S_IFMT(info.external_attr >> 16)
            if file_type == stat.S_IFLNK:
                _refuse(info.filename, "a link")
            elif file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                _refuse(info.filename, "a device or special file")
            _check_member_path(info.filename)
            total += info.file_size
            if total > limit:
                raise PayloadTooLarge(f"the archive unpacks to more than {limit} bytes")
            zipped.extract(info, into)


def _refuse(name: str, kind: str) -> NoReturn:
    raise UnsafePath(
        f"archive member {name!r} is {kind}; only files and folders are accepted", member=name
    )


def _check_member_path(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise UnsafePath(f"archive member {name!r} has an absolute path", member=name)
    if ".." in path.parts:
        raise UnsafePath(f"archive member {name!r} leaves the archive's folder", member=name)


def data_file(folder: Path) -> Path:
    """The one JSONL or Parquet file an unpacked archive holds."""
    found = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in DATA_SUFFIXES
        and path.is_file()
        and not any(part.startswith((".", "__MACOSX")) for part in path.relative_to(folder).parts)
    )
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:5]) or "none"
        raise InvalidInput(
            f"an archive must hold exactly one JSONL or Parquet file; it holds {names}",
            field=FILE_FIELD,
        )
    return found[0]


def remove(folder: Path) -> None:
    """Remove a failed upload's folder."""
    shutil.rmtree(folder, ignore_errors=True)


def check_early(session: Session, team: Team, fields: dict[str, str]) -> None:
    """Refuse bad form fields and a taken name before the file is stored, when the client
    sent the fields first (as browsers, curl -F and the platform's client do)."""
    if "name" not in fields:
        return
    upload_request(fields, Path(FILE_FIELD))
    datasets.ensure_name_free(session, team=team, name=fields["name"])
    session.commit()  # no connection is held while the file arrives


def register_upload(
    session: Session, *, team: Team, received: Received, store: ArtifactStore, limit: int
) -> tuple[Dataset, list[RowError]]:
    """Register an upload (unpacked first when it is an archive), its folder the only
    import root; committed here, so that a failure is known while the folder can go."""
    assert received.file is not None
    request = upload_request(received.fields, received.file)
    path = received.file
    if is_archive(path):
        unpack(path, received.folder / "files", limit=limit)
        path.unlink()
        path = data_file(received.folder / "files")
    request = request.model_copy(update={"path": str(path)})
    registered = datasets.register_dataset(
        session, team=team, request=request, roots=[received.folder], store=store
    )
    session.commit()
    return registered
