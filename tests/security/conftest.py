"""The API in-process on a fresh SQLite database, with accounts to attack it with."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from tests.conftest import RecordingRuntime


@pytest.fixture
def client(runtime: RecordingRuntime) -> Iterator[TestClient]:
    from web.app import create_api

    with TestClient(create_api(lambda: runtime)) as test_client:
        yield test_client
