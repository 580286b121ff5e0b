"""schemathesis against the served OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.runtime.test_demo import free_port


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    home = tmp_path_factory.mktemp("schema")
    api_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openperps.cli.main",
            "serve",
            "--ws-port",
            str(free_port()),
            "--api-port",
            str(api_port),
            "--log-level",
            "ERROR",
            "--admin-token",
            "t0ken",
        ],
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    url = f"http://127.0.0.1:{api_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    yield schemathesis.openapi.from_url(f"{url}/schema/openapi.json")
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


def test_no_generated_request_gets_a_server_error(api_schema: Any) -> None:
    """Every operation of the document, fuzzed by schemathesis' strategies (the pytest plugin
    is not used: the strategies are driven directly, inside this test's own server)."""
    checked = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code != 200 and "json" in response.headers.get("content-type", ""):
                body = response.json()
                assert body["success"] is False and isinstance(body.get("code"), int), body

        check()
        checked += 1
    assert checked >= 30
