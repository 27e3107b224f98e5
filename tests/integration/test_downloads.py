"""Artifact downloads from a real gateway process: a 300 MB folder streams as a tar while it
is read (memory flat, first byte at once, other requests answered meanwhile), and single
files honour ``Range``."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared import teams
from shared.db.models import Artifact
from shared.db.session import Database
from tests.helpers import REPO, free_port, served_gateway

pytestmark = pytest.mark.integration
MB = 1 << 20


def _rss_peak_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def gateway(pg_migrated: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``vr1 serve gateway`` as its own process, a team key, and a 300 MB folder artifact
    beside a small file artifact."""
    artifacts = tmp_path / "artifacts"
    folder = artifacts / "runs" / "checkpoint"
    folder.mkdir(parents=True)
    for i in range(3):  # sparse: 100 MB each on the wire, nothing on disk
        with (folder / f"model-{i}.safetensors").open("wb") as handle:
            handle.truncate(100 * MB)
    (folder / "config.json").write_text('{"model_type": "tiny"}')
    single = artifacts / "report.json"
    single.write_bytes(bytes(range(256)) * 4)
    db = Database(pg_migrated)
    with db.session() as session:
        team = teams.create_team(session, name="dl")
        key = teams.create_key(session, team=team).secret
        rows = {
            "folder": Artifact(
                team_id=team.id, kind="checkpoint", name="checkpoint", uri=folder.as_uri()
            ),
            "file": Artifact(team_id=team.id, kind="report", name="report", uri=single.as_uri()),
        }
        session.add_all(rows.values())
        session.flush()
        ids = {name: str(row.id) for name, row in rows.items()}
    db.dispose()
    port = free_port()
    env = {
        **os.environ,
        "VR1_DATABASE_URL": pg_migrated,
        "VR1_ARTIFACT_URI": artifacts.as_uri(),
        "VR1_PORT": str(port),
        "VR1_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    with served_gateway(env, tmp_path / "gateway.log") as (base, server):
        yield {
            "base": base,
            "auth": {"Authorization": f"Bearer {key}"},
            "ids": ids,
            "pid": server.pid,
            "folder": folder,
            "single": single,
        }


def test_a_300_mb_folder_streams_with_flat_memory(gateway: dict[str, Any]) -> None:
    base, auth = gateway["base"], gateway["auth"]
    for _ in range(3):  # warm up the routes once, so the peak below is the download's
        assert httpx.get(f"{base}/v1/jobs", headers=auth).status_code == 200
    before = _rss_peak_mb(gateway["pid"])
    url = f"{base}/v1/artifacts/{gateway['ids']['folder']}/download"
    meanwhile: list[float] = []
    received = 0
    head = b""
    started = time.monotonic()
    with httpx.stream("GET", url, headers=auth, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-tar"
        length = int(response.headers["content-length"])
        first_byte: float | None = None
        for chunk in response.iter_bytes(MB):
            if first_byte is None:
                first_byte = time.monotonic() - started
                # Another request while the download runs.
                thread = threading.Thread(target=_timed_list, args=(base, auth, meanwhile))
                thread.start()
            if len(head) < 4 * MB:
                head += chunk
            received += len(chunk)
        thread.join()
    grew = _rss_peak_mb(gateway["pid"]) - before
    assert received == length > 300 * MB
    assert first_byte is not None
    assert first_byte < 1.0
    assert meanwhile
    assert meanwhile[0] < 1.0
    assert grew < 100, f"the gateway's peak memory grew by {grew:.0f} MB"
    # A real tar: its first members are where the folder's files are, in order.
    with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
        first = tar.next()
        assert first is not None
        assert (first.name, first.size) == ("checkpoint/config.json", 22)
    print(
        f"\n300 MB folder: first byte {first_byte * 1000:.0f} ms, "
        f"GET /v1/jobs meanwhile {meanwhile[0] * 1000:.0f} ms, peak memory +{grew:.1f} MB"
    )


def _timed_list(base: str, auth: dict[str, str], out: list[float]) -> None:
    started = time.monotonic()
    response = httpx.get(f"{base}/v1/jobs", headers=auth, timeout=30)
    assert response.status_code == 200
    out.append(time.monotonic() - started)


def test_a_folder_download_is_a_complete_tar(gateway: dict[str, Any], tmp_path: Path) -> None:
    small = gateway["folder"] / "nested"
    small.mkdir()
    (small / ("long-name-" * 12 + ".txt")).write_text("x" * 1000)  # a PAX header
    url = f"{gateway['base']}/v1/artifacts/{gateway['ids']['folder']}/download"
    target = tmp_path / "download.tar"
    with (
        httpx.stream("GET", url, headers=gateway["auth"], timeout=120) as response,
        target.open("wb") as out,
    ):
        for chunk in response.iter_bytes(MB):
            out.write(chunk)
    assert target.stat().st_size == int(response.headers["content-length"])
    with tarfile.open(target) as tar:
        sizes = {m.name: m.size for m in tar.getmembers()}
    assert sizes == {
        "checkpoint/config.json": 22,
        f"checkpoint/nested/{'long-name-' * 12}.txt": 1000,
        **{f"checkpoint/model-{i}.safetensors": 100 * MB for i in range(3)},
    }


def test_a_single_file_honours_range(gateway: dict[str, Any]) -> None:
    url = f"{gateway['base']}/v1/artifacts/{gateway['ids']['file']}/download"
    whole = httpx.get(url, headers=gateway["auth"])
    assert whole.content == gateway["single"].read_bytes()
    assert whole.headers["accept-ranges"] == "bytes"
    part = httpx.get(url, headers={**gateway["auth"], "Range": "bytes=256-511"})
    assert part.status_code == 206
    assert part.content == bytes(range(256))
    assert part.headers["content-range"] == "bytes 256-511/1024"
    outside = httpx.get(url, headers={**gateway["auth"], "Range": "bytes=5000-6000"})
    assert outside.status_code == 416
