"""`fleet-probe`, the health checks compose and Kubernetes run, against real servers: a
Redis, a Celery worker process, HTTP servers answering what the services answer."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.parts import celery_worker, redis_server
from stack.processes import free_port
from workers.queues import FleetQueue

pytestmark = pytest.mark.integration

PROBE = str(Path(sys.executable).with_name("fleet-probe"))


def probe(*args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    if redis_url:
        env["FLEET_REDIS__URL"] = redis_url
    return subprocess.run([PROBE, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("probe-redis")) as url:
        yield url


def serving(status: int) -> tuple[http.server.HTTPServer, str]:
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(status)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/healthz"


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (401, True), (503, False)])
def test_http_probe_passes_below_500(status: int, healthy: bool) -> None:
    server, url = serving(status)
    try:
        done = probe("http", url)
    finally:
        server.shutdown()
        server.server_close()
    assert (done.returncode == 0) is healthy, done.stderr
    if not healthy:
        assert f"HTTP {status}" in done.stderr


def test_http_probe_fails_when_nothing_listens() -> None:
    done = probe("http", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "2")
    assert done.returncode == 1 and "unhealthy" in done.stderr


def test_redis_probe(redis_url: str) -> None:
    assert probe("redis", redis_url=redis_url).returncode == 0
    down = probe("redis", "--timeout", "1", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 1 and "unhealthy: redis" in down.stderr


def test_worker_probe_asks_this_hosts_worker_of_that_queue(redis_url: str, tmp_path: Path) -> None:
    env = {"FLEET_REDIS__URL": redis_url, "FLEET_DATA_DIR": str(tmp_path)}
    # Named as `fleet worker sla` names itself: QUEUE@<host name>.
    with celery_worker(env, [FleetQueue.SLA], tmp_path, pool="solo", name="sla"):
        alive = probe("worker", "sla", redis_url=redis_url)
        other_queue = probe("worker", "metrics", "--timeout", "2", redis_url=redis_url)
    assert alive.returncode == 0, alive.stderr
    assert other_queue.returncode == 1
    assert "no answer within 2 s" in other_queue.stderr
