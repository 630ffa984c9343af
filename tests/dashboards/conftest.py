"""Driving the dashboard's callbacks over HTTP, as the browser does, and waiting for the
change feed instead of sleeping."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from app.changes import CHANNEL, ChangeFeed
from tests.conftest import AUTH, LiveServer, TestDatabase


class DashClient:
    """Calls a Dash callback by its outputs, with the inputs a browser would send."""

    def __init__(self, server: LiveServer) -> None:
        self.http = httpx.Client(base_url=server.url + "/dashboard", timeout=30, headers=AUTH)
        self.dependencies = self.http.get("/_dash-dependencies").json()

    def call(
        self, outputs: list[str], changed: list[str] | None = None, **inputs: Any
    ) -> dict[str, dict[str, Any]]:
        """`outputs` like ["overview-kpis.children"]; `inputs` by component id with dots as
        double underscores: view__data={...}; `changed` the inputs that triggered the call
        (default: all given)."""
        wanted = ".." + "...".join(outputs) + ".." if len(outputs) > 1 else outputs[0]
        (dependency,) = [d for d in self.dependencies if d["output"].split("@")[0] == wanted]
        values = {k.replace("__", "."): v for k, v in inputs.items()}
        payload = {
            "output": dependency["output"],
            "outputs": [self._prop(o) for o in outputs] if len(outputs) > 1 else
                       self._prop(outputs[0]),
            "inputs": [
                {**self._prop(f"{i['id']}.{i['property']}"),
                 "value": values.get(f"{i['id']}.{i['property']}")}
                for i in dependency["inputs"]
            ],
            "changedPropIds": changed if changed is not None else list(values),
            "state": [
                {**self._prop(f"{s['id']}.{s['property']}"),
                 "value": values.get(f"{s['id']}.{s['property']}")}
                for s in dependency["state"]
            ],
        }  # fmt: skip
        response = self.http.post("/_dash-update-component", json=payload)
        if response.status_code == 204:
            return {}
        assert response.status_code == 200, response.text
        return response.json()["response"]  # type: ignore[no-any-return]

    @staticmethod
    def _prop(name: str) -> dict[str, str]:
        component, prop = name.rsplit(".", 1)
        return {"id": component, "property": prop}


@pytest.fixture(scope="session")
def dash_client(live_server: LiveServer) -> DashClient:
    return DashClient(live_server)


def wait_for_feed(db: TestDatabase, feed: ChangeFeed, timeout: float = 10.0) -> None:
    """Return once the feed has heard every change committed before this call."""
    marker = uuid.uuid4().hex
    db.execute(f"NOTIFY {CHANNEL}, '{marker}'")
    deadline = time.monotonic() + timeout
    while marker not in feed.recent_payloads:
        assert time.monotonic() < deadline, "the change feed did not hear the marker"
        time.sleep(0.005)


def view(**overrides: Any) -> dict[str, Any]:
    """A dashboard view as the `view` store holds it: a fixed period, so no clock is read."""
    return {"period": "custom", "tz": "UTC", "granularity": "day", "streams": [],
            "start": "2024-03-10", "end": "2024-03-11", "problems": [], **overrides}  # fmt: skip
