"""The console's cookie sign-in, CSRF checks and role-filtered navigation (in-process)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

import fakeredis
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from fleet.identity import Role
from tests.conftest import RecordingRuntime
from tests.support.identities import PASSWORD

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
PRESIGN = re.compile(r'name="presign" value="([^"]+)"')


@pytest.fixture
def client(runtime: RecordingRuntime) -> Iterator[TestClient]:
    from web.app import create_api

    runtime.redis = fakeredis.FakeRedis(decode_responses=True)
    runtime.identities.add_user("vera", Role.VIEWER, PASSWORD)
    runtime.identities.add_user("otto", Role.OPERATOR, PASSWORD)
    with TestClient(create_api(lambda: runtime), base_url="http://127.0.0.1") as c:
        yield c


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    form = client.get("/console/sign-in")
    presign = PRESIGN.search(form.text)
    assert presign is not None
    return client.post(
        "/console/sign-in",
        data={
            "username": username,
            "password": password,
            "presign": presign.group(1),
            "next": "/console/",
        },
        follow_redirects=False,
    ).headers.get("location", "")


def test_a_page_without_a_session_redirects_to_sign_in(client: TestClient) -> None:
    r = client.get("/console/?fleet=demo", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/sign-in?next=%2Fconsole%2F%3Ffleet%3Ddemo"


def test_sign_in_sets_an_httponly_strict_cookie_and_opens_the_overview(
    client: TestClient,
) -> None:
    form = client.get("/console/sign-in")
    presign = PRESIGN.search(form.text)
    assert presign is not None
    r = client.post(
        "/console/sign-in",
        data={"username": "vera", "password": PASSWORD, "presign": presign.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"].lower()
    assert "fleet_console=sess_" in cookie or "fleet_console=" in cookie
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    page = client.get("/console/")
    assert page.status_code == 200 and "vera" in page.text


def test_wrong_password_and_missing_presign_are_refused(client: TestClient) -> None:
    form = client.get("/console/sign-in")
    presign = PRESIGN.search(form.text)
    assert presign is not None
    wrong = client.post(
        "/console/sign-in",
        data={"username": "vera", "password": "nope", "presign": presign.group(1)},
    )
    assert wrong.status_code == 401 and "wrong username or password" in wrong.text.lower()
    stale = client.post(
        "/console/sign-in", data={"username": "vera", "password": PASSWORD, "presign": "x"}
    )
    assert stale.status_code == 400 and "expired" in stale.text
    assert "fleet_console" not in client.cookies


def test_next_is_kept_to_console_paths(client: TestClient) -> None:
    form = client.get("/console/sign-in")
    presign = PRESIGN.search(form.text)
    assert presign is not None
    r = client.post(
        "/console/sign-in",
        data={
            "username": "vera",
            "password": PASSWORD,
            "presign": presign.group(1),
            "next": "https://evil.example/",
        },
        follow_redirects=False,
    )
    assert r.headers["location"] == "/console/"


def test_a_post_without_the_sessions_csrf_token_is_refused(client: TestClient) -> None:
    sign_in(client, "vera")
    page = client.get("/console/")
    csrf = CSRF.search(page.text)
    assert csrf is not None
    refused = client.post("/console/sign-out", data={"csrf": "0" * 64}, follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert client.get("/console/", follow_redirects=False).status_code == 200
    out = client.post("/console/sign-out", data={"csrf": csrf.group(1)}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_the_nav_offers_only_what_the_role_may_open(client: TestClient) -> None:
    from fleet.identity import AuthMethod, Permission, Principal
    from web.console.nav import NAV, nav_for

    sign_in(client, "vera")
    page = client.get("/console/")
    assert 'href="/console/sla"' in page.text
    service = Principal(
        "token:ci",
        "ci",
        "service",
        AuthMethod.SERVICE_TOKEN,
        frozenset({Permission.PROVISIONING_READ}),
    )
    offered = {item["path"] for item in nav_for(service, "/console/provisioning")}
    assert offered == {"/console/provisioning"}
    assert {n.path for n in NAV} >= {
        "/console/provisioning",
        "/console/approvals",
        "/console/audit",
        "/console/money",
        "/console/control",
        "/console/scaling",
    }


def test_the_guard_still_refuses_the_api_without_a_token(client: TestClient) -> None:
    sign_in(client, "vera")
    assert client.get("/api/v1/approvals").status_code == 401


def test_the_overview_renders_for_a_signed_in_viewer(client: TestClient) -> None:
    sign_in(client, "vera")
    page = client.get("/console/")
    assert page.status_code == 200, page.text
    assert 'aria-label="Console"' in page.text and "Agents by health" in page.text
