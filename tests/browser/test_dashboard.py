"""The dashboard as a person uses it: log in with the team's key, read the jobs of a real
pipeline run, and act on them; what the pages show is checked against the API."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Site, log_in, screenshot

pytestmark = pytest.mark.integration


def _open(page: Page, site: Site, route: str) -> None:
    page.goto(f"{site.base}/ui/#{route}")


def _images_loaded(page: Page, selector: str) -> None:
    """Every image under ``selector`` decoded (fetched with the key, shown by object URL)."""
    page.wait_for_function(
        """(selector) => {
            const images = [...document.querySelectorAll(selector)];
            return images.length > 0 && images.every((i) => i.complete && i.naturalWidth > 0);
        }""",
        arg=selector,
    )


def test_a_wrong_key_is_refused_at_login(page: Page, site: Site) -> None:
    page.goto(f"{site.base}/")
    expect(page).to_have_url(re.compile(r"/ui/#/login"))
    page.fill("#api-key", "vr1_000000000000_not-a-key")
    page.click("button[type=submit]")
    expect(page.locator(".login-error")).to_have_text("Invalid key.")
    assert page.evaluate("sessionStorage.length") == 0
    screenshot(page, "login-refused")


def test_log_out_and_a_revoked_key_lead_back_to_login(page: Page, site: Site) -> None:
    log_in(page, site)
    page.click("#logout")
    expect(page.locator("#api-key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    _open(page, site, f"/jobs/{site.pipeline['id']}")
    expect(page).to_have_url(re.compile(r"#/login\?next=%23%2Fjobs%2F"))
    # A key the API stops accepting sends the user back to login, then where they were.
    page.evaluate("sessionStorage.setItem('vr1.apiKey', 'vr1_000000000000_gone')")
    _open(page, site, "/datasets")
    expect(page).to_have_url(re.compile(r"#/login\?next=%23%2Fdatasets$"))
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#api-key", site.key)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/datasets$"))


def test_jobs_list_shows_the_pipeline_and_its_children(page: Page, site: Site) -> None:
    log_in(page, site)
    jobs = [site.pipeline, *site.children.values()]
    for job in jobs:
        row = page.locator(f'tr[data-job-id="{job["id"]}"]')
        expect(row).to_be_visible()
        expect(row.locator(".badge")).to_have_text("succeeded")
    steps = len(site.children)  # the pipeline's own progress counts its finished children
    expect(page.locator(f'tr[data-job-id="{site.pipeline["id"]}"] .progress-text')).to_have_text(
        f"{steps}/{steps} jobs"
    )
    grpo = site.children["grpo"]
    stages = grpo["spec"]["stages"]
    steps = sum(stage["steps"] for stage in stages)
    grpo_row = page.locator(f'tr[data-job-id="{grpo["id"]}"]')
    expect(grpo_row.locator(".progress-text")).to_have_text(f"{steps}/{steps} steps")
    last = stages[-1]
    shape = f"{last['max_completion_tokens']}×{last['group_size']}"
    expect(grpo_row).to_contain_text(f"stage {len(stages)}/{len(stages)} · {shape}")
    coldstart = site.children["coldstart"]
    expect(page.locator(f'tr[data-job-id="{coldstart["id"]}"] .progress-text')).to_have_text(
        f"{coldstart['items_total']}/{coldstart['items_total']} items"
    )
    screenshot(page, "jobs")

    page.select_option("select[name=kind]", "grpo")
    expect(page).to_have_url(re.compile(r"#/jobs\?kind=grpo$"))
    expect(page.locator("table.jobs tbody tr")).to_have_count(1)
    expect(page.locator(f'tr[data-job-id="{grpo["id"]}"]')).to_be_visible()
    page.reload()  # the filter lives in the URL
    expect(page.locator("select[name=kind]")).to_have_value("grpo")


def test_grpo_page_charts_the_rollout_policy_gap_and_warns(page: Page, site: Site) -> None:
    """What a run with vLLM rollouts stores each step (the names and shapes its trainer
    writes; the values are made up for the page) and its warning event, as shown."""
    import uuid

    from shared import events
    from shared.db.models import Metric
    from shared.db.session import Database
    from shared.events import EventType

    job = site.children["grpo"]
    figures = ("rollout_logp_gap", "rollout_logp_gap_signed", "is_ratio_mean", "is_clipped_frac")
    database = Database(site.database_url)
    with database.session() as session:
        for idx, stage in enumerate(job["spec"]["stages"]):
            for step in range(1, stage["steps"] + 1):
                gap = 1e-4 * step * (idx + 1)
                values = dict(zip(figures, (gap, gap / 3, 1.0 + gap, 0.0), strict=True))
                session.add_all(
                    Metric(job_id=uuid.UUID(job["id"]), stage_idx=idx, step=step, name=k, value=v)
                    for k, v in values.items()
                )
        message = "step 3: vLLM's rollouts are 0.3 nats/token from the policy (warns above 0.05)"
        events.record(
            session, job["id"], EventType.OFF_POLICY, message, level="warning", stage_idx=1
        )
    database.dispose()
    log_in(page, site)
    _open(page, site, f"/jobs/{job['id']}")
    gap = page.locator('figure[data-metric="rollout_logp_gap"]')
    expect(gap).to_contain_text("Rollout vs policy: mean |gap| (nats/token)")
    expect(gap.locator("polyline.series")).to_have_count(2)  # one per stage
    expect(gap.locator("line.boundary")).to_have_count(1)
    for name in figures[1:]:
        expect(page.locator(f'figure[data-metric="{name}"] polyline.series')).to_have_count(2)
    # Ratios that move around 1.0001 get tick labels that tell them apart.
    ratio_ticks = page.locator(
        'figure[data-metric="is_ratio_mean"] g.axis text[text-anchor="end"]:not(.axis-label)'
    ).all_text_contents()
    assert len(ratio_ticks) >= 3
    assert len(set(ratio_ticks)) == len(ratio_ticks), ratio_ticks
    warning = page.locator("ol.events li.event.level-warning", has_text="rollout.off_policy")
    expect(warning).to_contain_text("0.3 nats/token")
    gap.scroll_into_view_if_needed()
    screenshot(page, "grpo-rollout-gap")


def test_pipeline_page_links_its_steps(page: Page, site: Site) -> None:
    log_in(page, site)
    _open(page, site, f"/jobs/{site.pipeline['id']}")
    cards = page.locator(".chain a.step-card")
    expect(cards).to_have_count(len(site.children))
    kinds = [cards.nth(i).get_attribute("data-kind") for i in range(len(site.children))]
    assert kinds == ["coldstart", "sft", "grpo", "eval"]
    for kind, child in site.children.items():
        card = page.locator(f'.chain a.step-card[data-kind="{kind}"]')
        expect(card).to_have_attribute("href", f"#/jobs/{child['id']}")
        expect(card.locator(".badge")).to_have_text("succeeded")
    screenshot(page, "pipeline")

    page.locator('.chain a.step-card[data-kind="grpo"]').click()
    expect(page.locator("h1")).to_have_text(site.children["grpo"]["name"])
    expect(page.locator(f'a[href="#/jobs/{site.pipeline["id"]}"]')).to_be_visible()


def test_grpo_page_shows_stages_charts_and_rollouts(page: Page, site: Site) -> None:
    grpo = site.children["grpo"]
    stages = grpo["spec"]["stages"]
    log_in(page, site)
    _open(page, site, f"/jobs/{grpo['id']}")
    rows = page.locator("table.stages tbody tr")
    expect(rows).to_have_count(len(stages))
    for row, stage in zip((rows.nth(0), rows.nth(1)), stages, strict=True):
        expect(row).to_contain_text(f"{stage['max_completion_tokens']} × {stage['group_size']}")
        expect(row).to_contain_text(f"{stage['steps']}/{stage['steps']}")
        expect(row.locator(".badge")).to_have_text("succeeded")

    chart = page.locator('figure[data-metric="completion_len_max"] svg')
    expect(chart.locator("line.boundary")).to_have_count(1)
    expect(chart.locator("line.cap")).to_have_count(2)
    expect(chart.locator("polyline.series")).to_have_count(2)
    boundary = float(chart.locator("line.boundary").get_attribute("x1") or "nan")
    first, second = (
        [float(p.split(",")[0]) for p in (series.get_attribute("points") or "").split()]
        for series in (
            chart.locator("polyline.series").nth(0),
            chart.locator("polyline.series").nth(1),
        )
    )
    assert max(first) < boundary < min(second)  # the line stands between the two stages
    caps = [float(chart.locator("line.cap").nth(i).get_attribute("y1") or "nan") for i in (0, 1)]
    assert caps[1] < caps[0]  # stage 2's larger cap is drawn higher
    for name in ("reward_mean", "accuracy", "loss", "kl"):
        expect(page.locator(f'figure[data-metric="{name}"] polyline.series')).to_have_count(2)
    chart.hover()
    expect(page.locator('figure[data-metric="completion_len_max"] .chart-tip')).to_contain_text(
        "step"
    )

    samples = page.locator("table.samples tbody tr")
    expect(samples.first).to_be_visible()
    _images_loaded(page, "table.samples tbody tr:first-child img")
    expect(samples.first.locator("pre.completion")).not_to_be_empty()
    checkpoints = page.locator("table.stages tbody button", has_text="Download")
    expect(checkpoints).to_have_count(2)
    events = page.locator("ol.events li.event")
    expect(events.filter(has_text="stage.finished")).to_have_count(2)
    screenshot(page, "grpo")
    page.set_viewport_size({"width": 1920, "height": 1080})
    screenshot(page, "grpo-1920")


def test_coldstart_page_shows_the_funnel_of_the_api(page: Page, site: Site, tmp_path: Path) -> None:
    coldstart = site.children["coldstart"]
    with site.api() as client:
        funnel = client.get(f"/v1/jobs/{coldstart['id']}/funnel").json()
        records = client.get(f"/v1/jobs/{coldstart['id']}/records").json()
        artifacts = client.get(f"/v1/jobs/{coldstart['id']}/artifacts").json()
    log_in(page, site)
    _open(page, site, f"/jobs/{coldstart['id']}")
    for step in ("items_in", "captioned", "described", "reasoned", "verified", "kept"):
        count = page.locator(f'.funnel-row[data-step="{step}"] .count')
        expect(count).to_have_text(str(funnel[step]))
    expect(page.locator("article.record")).to_have_count(min(10, records["total"]))
    _images_loaded(page, "article.record img")
    screenshot(page, "coldstart")

    report = next(a for a in artifacts if a["kind"] == "report")
    row = page.locator(f'tr[data-artifact-id="{report["id"]}"]')
    with page.expect_download() as started:
        row.get_by_role("button").click()
    saved = tmp_path / "report.json"
    started.value.save_as(saved)
    assert saved.stat().st_size == report["size_bytes"]
    assert json.loads(saved.read_text())["kept"] == funnel["kept"]


def test_eval_page_shows_the_accuracy_table(page: Page, site: Site) -> None:
    evaluation = site.children["eval"]
    accuracy = evaluation["output"]["accuracy"]
    log_in(page, site)
    _open(page, site, f"/jobs/{evaluation['id']}")
    for label, figures in accuracy.items():
        row = page.locator(f'table.accuracy tr[data-dataset="{label}"]')
        expect(row).to_contain_text(f"{100 * figures['accuracy']:.1f}%")
        expect(row).to_contain_text(f"{100 * figures['format_rate']:.1f}%")
    with site.api() as client:
        results = client.get(f"/v1/jobs/{evaluation['id']}/results").json()
    expect(page.locator("table.results tbody tr")).to_have_count(min(10, results["total"]))
    screenshot(page, "eval")


def test_dataset_page_shows_items_with_images(page: Page, site: Site) -> None:
    log_in(page, site)
    _open(page, site, "/datasets")
    for dataset_id in site.datasets.values():
        expect(page.locator(f'tr[data-dataset-id="{dataset_id}"]')).to_be_visible()
    screenshot(page, "datasets")
    with site.api() as client:
        source = client.get(f"/v1/datasets/{site.datasets['source']}").json()
    page.locator(f'tr[data-dataset-id="{source["id"]}"] a').click()
    expect(page.locator("h1")).to_have_text(source["name"])
    expect(page.locator("table.items tbody tr")).to_have_count(min(20, source["size"]))
    _images_loaded(page, "table.items img")
    screenshot(page, "dataset")


def test_another_team_sees_none_of_these_jobs(page: Page, site: Site) -> None:
    log_in(page, site, site.other_key)
    expect(page.locator("main")).to_contain_text("No jobs yet.")
    expect(page.locator("tr[data-job-id]")).to_have_count(0)
    screenshot(page, "other-team")
    _open(page, site, f"/jobs/{site.pipeline['id']}")
    expect(page.locator("h1")).to_have_text("Job not found")
    screenshot(page, "other-team-job")


def _queued_job(site: Site, name: str) -> dict[str, Any]:
    """An SFT job nobody runs (nothing relays its messages): it stays queued."""
    spec = {
        "kind": "sft",
        "model": site.pipeline["spec"]["base_model"],
        "dataset_id": site.children["coldstart"]["output"]["dataset_id"],
        "max_steps": 1,
    }
    with site.api() as client:
        job: dict[str, Any] = client.post("/v1/jobs", json={"name": name, "spec": spec}).json()
    assert job["status"] == "queued"
    return job


def test_an_open_job_page_follows_the_job_without_reloading(page: Page, site: Site) -> None:
    job = _queued_job(site, "followed")
    log_in(page, site)
    _open(page, site, f"/jobs/{job['id']}")
    expect(page.locator(".job-head .badge")).to_have_text("queued")
    expect(page.locator("ol.events li.event")).not_to_have_count(0)
    page.evaluate("window.sameDocument = true")
    with site.api() as client:
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    expect(page.locator(".job-head .badge")).to_have_text("cancelled")
    expect(page.locator("ol.events li.event").last).to_contain_text("cancelled")
    expect(page.locator(".job-head button", has_text="Cancel")).to_have_count(0)
    assert page.evaluate("window.sameDocument") is True  # updated in place, not reloaded


def test_cancel_an_active_job_from_the_list(page: Page, site: Site) -> None:
    log_in(page, site)
    expect(page.locator("tr[data-job-id]").first).to_be_visible()
    job = _queued_job(site, "to-cancel")  # submitted elsewhere while the list is open
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    expect(row.locator(".badge")).to_have_text("queued")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Cancel").click()
    expect(row.locator(".badge")).to_have_text("cancelled")
    expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
    with site.api() as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    screenshot(page, "cancelled")


def test_a_job_started_from_the_page_is_checked_then_created_once(page: Page, site: Site) -> None:
    log_in(page, site)
    page.get_by_role("link", name="New job").click()
    expect(page.locator("h1")).to_have_text("New job")
    page.select_option("form.new-job select[name=kind]", "eval")
    # The template holds the team's newest eval dataset and GRPO checkpoint.
    checkpoint = site.children["grpo"]["output"]["checkpoint_uri"]
    spec = page.locator("textarea[name=spec]")
    expect(spec).to_have_value(re.compile(re.escape(json.dumps(checkpoint))))
    template = json.loads(spec.input_value())
    assert template == {"kind": "eval", "model": checkpoint, "dataset_ids": [site.datasets["test"]]}
    with site.api() as client:
        before = client.get("/v1/jobs").json()["total"]

    submit = page.get_by_role("button", name="Submit job")
    spec.fill("{not json")
    submit.click()
    expect(page.locator(".error-box")).to_contain_text("The spec is not JSON")
    spec.fill(json.dumps({**template, "max_tries": 0}))
    submit.click()
    expect(page.locator(".error-box")).to_contain_text("max_tries")
    expect(page).to_have_url(re.compile(r"#/jobs/new$"))

    spec.fill(json.dumps({**template, "limit": 2}, indent=2))
    page.fill("input[name=name]", "from-the-page")
    screenshot(page, "new-job")
    submit.click()
    expect(page.locator(".job-head h1")).to_have_text("from-the-page")
    expect(page.locator(".job-head .badge")).to_have_text("queued")
    job_id = page.url.rsplit("/", 1)[-1]
    with site.api() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert (job["kind"], job["spec"]["model"], job["spec"]["limit"]) == ("eval", checkpoint, 2)
        assert client.get("/v1/jobs").json()["total"] == before + 1  # the refusals made none
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_run_again_starts_from_the_jobs_own_spec(page: Page, site: Site) -> None:
    grpo = site.children["grpo"]
    log_in(page, site)
    _open(page, site, f"/jobs/{grpo['id']}")
    page.get_by_role("link", name="Run again…").click()
    expect(page.locator("h1")).to_have_text("Run again")
    expect(page.locator("form.new-job select[name=kind]")).to_have_value("grpo")
    expect(page.locator("input[name=name]")).to_have_value(f"{grpo['name']} (again)")
    assert json.loads(page.locator("textarea[name=spec]").input_value()) == grpo["spec"]
    page.get_by_role("button", name="Submit job").click()  # a stored spec is a valid one
    expect(page.locator(".job-head h1")).to_have_text(f"{grpo['name']} (again)")
    job_id = page.url.rsplit("/", 1)[-1]
    with site.api() as client:
        again = client.get(f"/v1/jobs/{job_id}").json()
        assert (again["kind"], again["spec"]) == ("grpo", grpo["spec"])
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def _toy_parquet(toy: Path, path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` toy rows with their images embedded, as Hugging Face datasets writes."""
    rows = [json.loads(line) for line in (toy / "train.jsonl").read_text().splitlines()[:n]]
    images = [{"bytes": (toy / r["image"]).read_bytes(), "path": r["image"]} for r in rows]
    table = pa.table(
        {
            "image": images,
            "question": [r["question"] for r in rows],
            "answer": [r["answer"] for r in rows],
        }
    )
    pq.write_table(table, path)
    return rows


def test_a_dataset_uploaded_from_the_page_lists_its_items(
    page: Page, site: Site, teachers: dict[str, Path], tmp_path: Path
) -> None:
    log_in(page, site)
    _open(page, site, "/datasets")
    page.locator("details.upload summary").click()

    # A file with a bad row is refused with the row and its reason; nothing is stored.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "none.png", "question": "What colour?"}\n')
    page.set_input_files("input[type=file]", bad)
    page.get_by_role("button", name="Upload").click()
    refusal = page.locator(".upload-status .error-box")
    expect(refusal).to_contain_text("nothing was stored")
    expect(refusal).to_contain_text("row 1")

    parquet = tmp_path / "uploaded-toy.parquet"
    rows = _toy_parquet(teachers["toy"], parquet, 6)
    page.fill("input[name=name]", "")
    page.set_input_files("input[type=file]", parquet)
    expect(page.locator("input[name=name]")).to_have_value("uploaded-toy")
    page.select_option(".upload-form select[name=kind]", "rl")
    screenshot(page, "upload")
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("h1")).to_have_text("uploaded-toy")
    expect(page.locator("table.items tbody tr")).to_have_count(len(rows))
    _images_loaded(page, "table.items img")
    screenshot(page, "uploaded")
    with site.api() as client:
        listed = client.get("/v1/datasets", params={"kind": "rl"}).json()["items"]
    uploaded = next(d for d in listed if d["name"] == "uploaded-toy")
    assert (uploaded["size"], uploaded["format"]) == (len(rows), "parquet")
    assert "bad" not in {d["name"] for d in listed}
