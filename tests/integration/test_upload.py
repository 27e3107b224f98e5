"""Dataset uploads (``POST /v1/datasets`` as multipart/form-data) to a real gateway on
PostgreSQL: archives of JSONL and images, Parquet as Hugging Face ``datasets`` writes it,
unsafe archives, bad rows, bad fields and oversized bodies refused with nothing stored,
and a 200 MB upload that leaves the server's memory flat."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import teams
from shared.db.models import Dataset, Item
from shared.db.session import Database
from shared.storage import path_from_uri
from tests.helpers import REPO, free_port, serve_app, served_gateway, write_image

pytestmark = pytest.mark.integration
MB = 1 << 20
LIMIT = 8 * MB  # the test gateway's VR1_MAX_UPLOAD_BYTES


@dataclass
class Gateway:
    base: str
    db: Database
    artifacts: Path


@dataclass
class Caller:
    """A team of its own (so that "nothing stored" is about this test alone) and its key."""

    gateway: Gateway
    team_id: uuid.UUID
    key: str

    def upload(self, file: tuple[str, Any], **fields: Any) -> httpx.Response:
        form = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in fields.items()}
        return httpx.post(
            f"{self.gateway.base}/v1/datasets",
            headers={"Authorization": f"Bearer {self.key}"},
            data=form,
            files={"file": file},
            timeout=120,
        )

    def get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {self.key}"}
        response = httpx.get(f"{self.gateway.base}{path}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def stored(self) -> tuple[int, int, list[Path]]:
        """The team's datasets and items, and every file under its upload folder."""
        with self.gateway.db.session() as session:
            ids = list(session.scalars(select(Dataset.id).where(Dataset.team_id == self.team_id)))
            items = session.scalar(
                select(func.count()).select_from(Item).where(Item.dataset_id.in_(ids))
            )
        folder = self.gateway.artifacts / "uploads" / str(self.team_id)
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []
        return len(ids), items or 0, files


@pytest.fixture(scope="module")
def gateway(pg_module: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    artifacts = tmp_path_factory.mktemp("upload") / "artifacts"
    settings = GatewaySettings(
        database_url=pg_module, artifact_uri=artifacts.as_uri(), max_upload_bytes=LIMIT
    )
    app = create_app(settings)
    with serve_app(app) as base:
        yield Gateway(base, app.state.context.db, artifacts)


@pytest.fixture
def caller(gateway: Gateway) -> Caller:
    with gateway.db.session() as session:
        team = teams.create_team(session, name=f"t-{uuid.uuid4().hex[:8]}")
        return Caller(gateway, team.id, teams.create_key(session, team=team).secret)


def _toy_files(folder: Path, n: int = 3) -> dict[str, bytes]:
    """JSONL rows naming images by relative path, and the images: archive name → bytes."""
    files: dict[str, bytes] = {}
    rows = []
    for i in range(n):
        image = write_image(folder / f"{i}.png", ["red", "green", "blue"][i % 3])
        files[f"data/img/{i}.png"] = image.read_bytes()
        rows.append(
            {"image": f"img/{i}.png", "question": f"Which colour is {i}?", "answer": str(i)}
        )
    files["data/rows.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return files


def _tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _check_items(caller: Caller, dataset: dict[str, Any], files: dict[str, bytes]) -> None:
    items = caller.get(f"/v1/datasets/{dataset['id']}/items")["items"]
    assert [item["answer"] for item in items] == ["0", "1", "2"]
    for i, item in enumerate(items):  # each stored image is the uploaded one
        assert path_from_uri(item["images"][0]).read_bytes() == files[f"data/img/{i}.png"]


@pytest.mark.parametrize(
    ("name", "pack"), [("toy.tar.gz", _tar), ("toy.tar", lambda f: _tar(f, "w")), ("toy.zip", _zip)]
)
def test_an_archive_of_jsonl_and_images_is_registered(
    caller: Caller, tmp_path: Path, name: str, pack: Any
) -> None:
    files = _toy_files(tmp_path)
    response = caller.upload((name, pack(files)), name="toy", kind="eval")
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["name"], dataset["kind"], dataset["size"], dataset["format"]) == (
        "toy",
        "eval",
        3,
        "jsonl",
    )
    assert dataset["skipped"] == []
    _check_items(caller, dataset, files)
    # The upload stays in the store as the dataset's source, unpacked (the archive is gone).
    source = Path(dataset["meta"]["source"])
    assert source.name == "rows.jsonl"
    assert source.is_relative_to(caller.gateway.artifacts / "uploads" / str(caller.team_id))
    assert not any(p.name == name for p in caller.stored()[2])


def test_hugging_face_parquet_with_embedded_images(caller: Caller, tmp_path: Path) -> None:
    import datasets
    from PIL import Image

    colours = ["red", "green", "blue", "white"]
    pictures = [Image.new("RGB", (24, 24), colour) for colour in colours]
    table = datasets.Dataset.from_dict(
        {
            "images": [[picture] for picture in pictures],
            "problem": [f"<image>Which colour is shown ({c[0]})?" for c in colours],
            "solution": colours,
        },
        features=datasets.Features(
            {
                "images": datasets.Sequence(datasets.Image()),
                "problem": datasets.Value("string"),
                "solution": datasets.Value("string"),
            }
        ),
    )
    path = tmp_path / "train.parquet"
    table.to_parquet(str(path))
    columns = {"image": "images", "question": "problem", "answer": "solution"}
    with path.open("rb") as handle:
        response = caller.upload(("train.parquet", handle), name="hf", kind="rl", columns=columns)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert (dataset["size"], dataset["format"]) == (4, "parquet")
    assert dataset["meta"]["columns"]["answer"] == "solution"
    items = caller.get(f"/v1/datasets/{dataset['id']}/items")["items"]
    assert [item["answer"] for item in items] == colours
    for item, colour in zip(items, colours, strict=True):
        with Image.open(path_from_uri(item["images"][0])) as stored:
            assert stored.convert("RGB").getpixel((5, 5)) == Image.new(
                "RGB", (1, 1), colour
            ).getpixel((0, 0))


def _with_link(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("data/img/evil.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buffer.getvalue()


def _zip_with_link(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("data/img/evil.png")
        link.external_attr = 0o120777 << 16  # a symbolic link, as Info-ZIP stores one
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "build", "member", "reason"),
    [
        ("a.tar", lambda f: _tar({**f, "../x.png": b"x"}, "w"), "../x.png", "leaves"),
        ("a.tgz", lambda f: _tar({**f, "/tmp/abs.png": b"x"}), "/tmp/abs.png", "absolute"),
        ("a.zip", lambda f: _zip({**f, "data/../../x": b"x"}), "data/../../x", "leaves"),
        ("a.zip", lambda f: _zip({**f, "/abs.png": b"x"}), "/abs.png", "absolute"),
        ("a.tar", _with_link, "data/img/evil.png", "a link"),
        ("a.zip", _zip_with_link, "data/img/evil.png", "a link"),
    ],
)
def test_unsafe_archive_members_are_refused_and_nothing_is_stored(
    caller: Caller, tmp_path: Path, name: str, build: Any, member: str, reason: str
) -> None:
    response = caller.upload((name, build(_toy_files(tmp_path))), name="bad")
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["error"], body["member"]) == ("unsafe_path", member)
    assert reason in body["message"]
    assert caller.stored() == (0, 0, [])
    assert not (tmp_path.parent / "x.png").exists()


def test_bad_rows_are_refused_with_their_line_and_nothing_is_stored(
    caller: Caller, tmp_path: Path
) -> None:
    files = _toy_files(tmp_path)
    files["data/rows.jsonl"] += b'{"image": "img/none.png", "question": "q", "answer": "a"}\n'
    response = caller.upload(("toy.zip", _zip(files)), name="rows")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "dataset_invalid"
    assert [(e["row"], e["field"]) for e in body["errors"]] == [(4, "image")]
    assert caller.stored() == (0, 0, [])
    # With on_error=skip the good rows are kept and the bad one reported.
    response = caller.upload(("toy.zip", _zip(files)), name="rows", on_error="skip")
    assert response.status_code == 201, response.text
    assert (response.json()["size"], [e["row"] for e in response.json()["skipped"]]) == (3, [4])


def test_bad_fields_and_files_are_422_as_for_json(caller: Caller, tmp_path: Path) -> None:
    files = _toy_files(tmp_path)
    headers = {"Authorization": f"Bearer {caller.key}"}
    for bad in ({"name": "no spaces"}, {"name": "ok", "kind": "cold"}, {"name": "ok", "typo": "1"}):
        uploaded = caller.upload(("toy.zip", _zip(files)), **bad)
        registered = httpx.post(
            f"{caller.gateway.base}/v1/datasets", headers=headers, json={**bad, "path": "x.jsonl"}
        )
        assert uploaded.status_code == registered.status_code == 422
        assert uploaded.json()["message"] == registered.json()["message"]
    columns = caller.upload(("toy.zip", _zip(files)), name="ok", columns="{image:")
    assert columns.status_code == 422
    assert "columns" in columns.json()["message"]
    path = caller.upload(("toy.zip", _zip(files)), name="ok", path="/etc/passwd")
    assert path.status_code == 422
    assert "no 'path'" in path.json()["message"]
    unknown = caller.upload(("toy.txt", b"hello"), name="ok")
    assert unknown.status_code == 422
    assert "cannot tell the format" in unknown.json()["message"]
    empty = caller.upload(("toy.zip", _zip({"data/readme.txt": b"hi"})), name="ok")
    assert empty.status_code == 422
    assert "exactly one JSONL or Parquet" in empty.json()["message"]
    corrupt = caller.upload(("toy.tar.gz", b"not an archive"), name="ok")
    assert corrupt.status_code == 422
    assert "not a readable archive" in corrupt.json()["message"]
    misnamed = httpx.post(
        f"{caller.gateway.base}/v1/datasets",
        headers=headers,
        data={"name": "ok"},
        files={"data": ("toy.zip", _zip(files))},
    )
    assert misnamed.status_code == 422
    assert "as the form field 'file'" in misnamed.json()["message"]
    assert caller.stored() == (0, 0, [])


def test_a_taken_name_is_refused_before_the_file_is_stored(caller: Caller, tmp_path: Path) -> None:
    files = _toy_files(tmp_path)
    assert caller.upload(("toy.zip", _zip(files)), name="once").status_code == 201
    before = caller.stored()
    again = caller.upload(("toy.zip", _zip(files)), name="once")
    assert again.status_code == 409
    assert "already exists" in again.json()["message"]
    assert caller.stored() == before


def test_an_oversized_upload_is_413_and_nothing_is_stored(caller: Caller) -> None:
    big = b"x" * (LIMIT + MB)
    declared = caller.upload(("big.jsonl", big), name="big")
    assert declared.status_code == 413, declared.text
    assert f"the limit is {LIMIT} bytes" in declared.json()["message"]

    class Unsized(io.RawIOBase):  # no length known up front: sent chunked
        def __init__(self) -> None:
            self.left = LIMIT + MB

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            chunk = b"y" * min(self.left, 64 * 1024 if size < 0 else size)
            self.left -= len(chunk)
            return chunk

    chunked = caller.upload(("big.jsonl", Unsized()), name="big")
    assert chunked.status_code == 413, chunked.text
    # A small archive that unpacks to more than the limit (a "zip bomb") is refused too.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rows.jsonl", b"")
        archive.writestr("zeros.bin", bytes(LIMIT + MB))
    assert len(buffer.getvalue()) < MB
    bomb = caller.upload(("bomb.zip", buffer.getvalue()), name="big")
    assert bomb.status_code == 413, bomb.text
    assert "unpacks to more than" in bomb.json()["message"]
    assert caller.stored() == (0, 0, [])


def test_a_body_that_is_neither_json_nor_multipart_is_415(caller: Caller) -> None:
    response = httpx.post(
        f"{caller.gateway.base}/v1/datasets",
        headers={"Authorization": f"Bearer {caller.key}", "Content-Type": "text/plain"},
        content=b'{"name": "x", "path": "x.jsonl"}',
    )
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["message"]


# --- memory -------------------------------------------------------------------------------


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_200_mb_upload_keeps_the_gateway_memory_flat(pg_migrated: str, tmp_path: Path) -> None:
    """``vr1 serve gateway`` as its own process: the archive streams to the store and is
    unpacked there, so the server's peak memory hardly moves."""
    db = Database(pg_migrated)
    with db.session() as session:
        key = teams.create_key(session, team=teams.create_team(session, name="big")).secret
    db.dispose()
    archive = tmp_path / "big.tar"
    files = _toy_files(tmp_path / "images")
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        padding = tmp_path / "padding.bin"
        with padding.open("wb") as handle:
            handle.write(os.urandom(200 * MB))
        tar.add(padding, "data/padding.bin")
    port = free_port()
    env = {
        **os.environ,
        "VR1_DATABASE_URL": pg_migrated,
        "VR1_ARTIFACT_URI": (tmp_path / "artifacts").as_uri(),
        "VR1_PORT": str(port),
        "VR1_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    with served_gateway(env, tmp_path / "gateway.log") as (base, server):
        auth = {"Authorization": f"Bearer {key}"}
        for _ in range(3):  # warm the routes up, so that the peak below is the upload's
            assert httpx.get(f"{base}/v1/datasets", headers=auth).status_code == 200
        before = _rss_peak_mb(server.pid)
        with archive.open("rb") as handle:
            response = httpx.post(
                f"{base}/v1/datasets",
                headers=auth,
                data={"name": "big"},
                files={"file": ("big.tar", handle)},
                timeout=300,
            )
        grew = _rss_peak_mb(server.pid) - before
    assert response.status_code == 201, response.text
    assert response.json()["size"] == 3
    stored = Path(response.json()["meta"]["source"]).parent / "padding.bin"
    assert stored.stat().st_size == 200 * MB
    assert grew < 60, f"the gateway's peak memory grew by {grew:.0f} MB"
    print(f"\n200 MB upload: peak memory +{grew:.1f} MB")
