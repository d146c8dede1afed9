"""The FinOps endpoints, the beat entry and the CLI's refusals (in-process, SQLite)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from config.settings import load_settings
from fleet.finops import service
from tests.conftest import RecordingRuntime
from workers.celery_config import celery_config
from workers.queues import TaskName

AUTH = {"Authorization": "Bearer fleet-demo-token"}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, runtime: RecordingRuntime) -> Iterator[TestClient]:
    monkeypatch.setenv("FLEET_REDIS__URL", "redis://127.0.0.1:1/0")
    from web.app import create_api

    with TestClient(create_api(lambda: runtime)) as client:
        yield client


def test_review_endpoints(api: TestClient, runtime: RecordingRuntime) -> None:
    url = "/api/v1/finops/review"
    assert api.get(url, params={"fleet": "empty", "week": "2026-W48"}).status_code == 401
    bad = api.get(url, params={"fleet": "empty", "week": "2026-48"}, headers=AUTH)
    assert bad.status_code == 422 and "week" in bad.text
    bad_fleet = api.get(url, params={"fleet": "../x", "week": "2026-W48"}, headers=AUTH)
    assert bad_fleet.status_code == 422 and "fleet" in bad_fleet.text
    no_such = api.get(url, params={"fleet": "empty", "week": "2026-W54"}, headers=AUTH)
    assert no_such.status_code == 404 and "2026-W54 does not exist" in no_such.text

    review = api.get(url, params={"fleet": "empty", "week": "2026-W48"}, headers=AUTH).json()
    assert review["kind"] == "finops-review" and review["week"] == "2026-W48"
    assert review["segments"] == [] and review["top_tasks"] == []
    # Redis away: the sweeps' overhead is not known, and is not shown as $0.
    assert review["economics"]["monitoring_overhead_per_hour"] == {"amount": None, "unknown": True}

    page = api.get(url + ".html", params={"fleet": "empty", "week": "2026-W48"}, headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "FinOps review: empty, week 2026-W48" in page.text

    econ = api.get("/api/v1/finops/economics", params={"fleet": "empty"}, headers=AUTH).json()
    assert econ["fleet"] == "empty" and "formula" in econ and econ["segments"] == []

    # A review kept by the beat is answered from its file.
    kept = {**review, "generated_at": "kept-by-beat"}
    service.save(kept, runtime.audit_log.files.report_dir)
    again = api.get(url, params={"fleet": "empty", "week": "2026-W48"}, headers=AUTH).json()
    assert again["generated_at"] == "kept-by-beat"


def test_monday_beat_entry_follows_the_policy() -> None:
    entry = celery_config(load_settings())["beat_schedule"]["audit-finops-weekly"]
    assert entry["task"] == TaskName.AUDIT_FINOPS_REVIEW
    cron = entry["schedule"]
    assert cron.day_of_week == {1} and cron.hour == {1} and cron.minute == {0}


def test_cli_refuses_a_bad_week_by_name(runtime: RecordingRuntime) -> None:
    from cli.main import main

    out = CliRunner().invoke(main, ["report", "finops", "--fleet", "demo", "--week", "48"])
    assert out.exit_code == 2 and "--week" in out.output and "ISO week" in out.output
    out = CliRunner().invoke(main, ["economics", "--fleet", "a/b"])
    assert out.exit_code == 2 and "--fleet" in out.output


def test_the_weekly_task_keeps_the_review_and_refuses_a_bad_week(
    monkeypatch: pytest.MonkeyPatch, runtime: RecordingRuntime
) -> None:
    from celery.exceptions import Reject

    from tasks.finops import finops_review

    monkeypatch.setenv("FLEET_REDIS__URL", "redis://127.0.0.1:1/0")
    (written,) = finops_review.run(fleet="empty", week="2026-W48")
    assert written.endswith("finops/empty-2026-W48.json")
    kept = service.saved(runtime.audit_log.files.report_dir, "empty", "2026-W48")
    assert kept is not None and kept["fleet"] == "empty"
    with pytest.raises(Reject, match="week"):
        finops_review.run(fleet="empty", week="W48")
