"""The browser tier: the dashboard in Debian's Chromium, driven by Playwright, against a
real gateway on a real PostgreSQL database.

The tier builds its data once: datasets registered over the API, then a small
``pipeline`` job (coldstart with the stand-in teachers → SFT → GRPO in two PTST stages →
eval; the sizes of tests/e2e/test_compose_pipeline.py) submitted over the API and run to
completion by the embedded runner on the same database and artifact store.  A second team
with its own key owns nothing of the first team's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from entrypoints.bootstrap import Embedded, embedded
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared import teams
from shared.settings import BaseVR1Settings
from tests.conftest import _fresh_database
from tests.helpers import REPO, pipeline_toy_files, serve_app, small_pipeline_spec

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / ".vr1" / "screenshots"


def api_client(base: str, key: str) -> httpx.Client:
    """An API client with a team's key."""
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@dataclass(frozen=True)
class Site:
    """The running gateway, the two teams' keys, and what the pipeline made."""

    base: str
    key: str
    other_key: str
    pipeline: dict[str, Any]
    children: dict[str, dict[str, Any]]  # kind → job
    datasets: dict[str, str]  # name → ID
    database_url: str

    def api(self) -> httpx.Client:
        """An API client with the first team's key."""
        return api_client(self.base, self.key)


def _run_pipeline(
    client: httpx.Client, platform: Embedded, data: Path, teachers: dict[str, Path]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Datasets registered and the pipeline submitted over the API, then run to its end by
    the embedded runner; returns the finished pipeline job and the dataset IDs."""
    ids = {}
    for name, kind in (("source", "source"), ("rl", "rl"), ("test", "eval")):
        body = {"name": name, "kind": kind, "path": f"{name}.jsonl"}
        created = client.post("/v1/datasets", json=body)
        assert created.status_code == 201, created.text
        ids[name] = created.json()["id"]
    spec = small_pipeline_spec(data, ids, teachers)
    submitted = client.post("/v1/jobs", json={"name": "dashboard", "spec": spec})
    assert submitted.status_code == 201, submitted.text
    platform.drain()  # the pipeline and each of its children, run to the end
    pipeline: dict[str, Any] = client.get(f"/v1/jobs/{submitted.json()['id']}").json()
    assert pipeline["status"] == "succeeded", pipeline["error"]
    return pipeline, ids


@pytest.fixture(scope="module")
def site(teachers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A gateway over a finished pipeline, with a key for its team and one for another."""
    root = tmp_path_factory.mktemp("dashboard")
    data = root / "data"
    data.mkdir()
    pipeline_toy_files(data, teachers)
    for url in _fresh_database():
        store = (root / "store").as_uri()
        settings = BaseVR1Settings(home=root / "home", database_url=url, artifact_uri=store)
        platform = embedded(settings)  # migrates the database
        team = platform.team()
        with platform.db.session() as session:
            key = teams.create_key(session, team=team).secret
            other = teams.create_team(session, name="other-team")
            other_key = teams.create_key(session, team=other).secret
        app = create_app(
            GatewaySettings(
                home=settings.home, database_url=url, artifact_uri=store, import_roots=[data]
            )
        )
        with serve_app(app) as base, api_client(base, key) as client:
            pipeline, ids = _run_pipeline(client, platform, data, teachers)
            children = client.get("/v1/jobs", params={"parent_id": pipeline["id"]}).json()
            kinds = {child["kind"]: child for child in children["items"]}
            yield Site(base, key, other_key, pipeline, kinds, ids, url)
        platform.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (a browser cannot be downloaded here, so Playwright never does).
    Playwright's sync API keeps an event loop running in this thread while it is open, so
    it is closed when this tier ends, before any other test calls ``asyncio.run``."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; install it: apt-get install -y chromium")
    with sync_playwright() as playwright:
        yield _launch(playwright)


def _launch(playwright: Playwright) -> Browser:
    args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab at 1280×800; an uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def screenshot(page: Page, name: str) -> None:
    """The whole page, for people to look at: .vr1/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # the sticky navigation at the top, as on arrival
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, site: Site, key: str | None = None) -> None:
    """Through the login view, as a person would."""
    page.goto(f"{site.base}/")
    page.fill("#api-key", key or site.key)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/#/jobs")
