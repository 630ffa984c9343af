"""A local Stripe API for tests: the real one is out of reach, so this answers in its shapes.

A threaded `http.server` on a free 127.0.0.1 port serving what the catch-up calls:
- `GET /v1/events`: a list object (`object: list`, `data`, `has_more`, `url`), newest first,
  with `limit` (capped at `max_page`, so a few events make several pages), `created` (an
  integer or `created[gt|gte|lt|lte]`), and the `starting_after` / `ending_before` cursors as
  Stripe documents them: `ending_before` answers the `limit` objects just newer than the
  cursor, still newest first, and `has_more` says whether newer ones remain.
- `GET /v1/balance_transactions/{id}`: the object, or Stripe's 404 error body.
Requests need `Authorization: Bearer <api_key>`. Scripted faults (`fail`) answer 429 (with
`Retry-After`), 500 or anything else in Stripe's error shape, for a number of requests or
until cleared. Every request is recorded with the time it arrived.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_fake_catchup"

Obj = dict[str, Any]

_ERROR_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass
class Fault:
    """Answer requests whose path starts with `path` with `status`, `times` times (None:
    until cleared), once `after` of them went through normally."""

    path: str
    status: int
    times: int | None
    retry_after: str | None = None
    after: int = 0


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, str]
    at: float  # time.monotonic()
    status: int


@dataclass
class FakeStripe:
    api_key: str = API_KEY
    max_page: int = 100
    page_delay: float = 0.0  # seconds each events page takes, to widen races in tests
    events: list[Obj] = field(default_factory=list)
    balance_transactions: dict[str, Obj] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._events_requests = 0
        self._pause_at: int | None = None
        self.paused = threading.Event()  # set while the paused request waits
        self.resume = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- what the account holds ----------------------------------------------------------------

    def add_events(self, *events: Obj) -> None:
        """Events as Stripe created them; the list order breaks same-second ties (later = newer)."""
        with self._lock:
            self.events.extend(events)

    def add_balance_transactions(self, *txns: Obj) -> None:
        with self._lock:
            self.balance_transactions.update({t["id"]: t for t in txns})

    def fail(
        self,
        path: str,
        *,
        status: int,
        times: int | None = 1,
        retry_after: str | None = None,
        after: int = 0,
    ) -> None:
        with self._lock:
            self.faults.append(Fault(path, status, times, retry_after, after))

    def pause_events_request(self, number: int) -> None:
        """The `number`-th request to /v1/events waits for `resume` (setting `paused`)."""
        self._pause_at = number

    def heal(self) -> None:
        with self._lock:
            self.faults.clear()

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.startswith(path)]

    # -- serving -------------------------------------------------------------------------------

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def answer(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, Obj, dict]:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        status, body, extra = self._route(method, parts.path, query, headers)
        with self._lock:
            self.requests.append(Request(parts.path, query, time.monotonic(), status))
        return status, body, extra

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[int, Obj, dict]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, _error(401, "Invalid API Key provided"), {}
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path) and fault.after > 0:
                    fault.after -= 1
                elif path.startswith(fault.path) and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    return fault.status, _error(fault.status, "scripted fault"), extra
        if method != "GET":
            return 405, _error(405, "only GET is faked"), {}
        if path == "/v1/events":
            with self._lock:
                self._events_requests += 1
                pause = self._events_requests == self._pause_at
            if pause:
                self.paused.set()
                self.resume.wait(timeout=60)
            if self.page_delay:
                time.sleep(self.page_delay)
            return 200, self._list_events(query), {}
        match = re.fullmatch(r"/v1/balance_transactions/([^/]+)", path)
        if match:
            with self._lock:
                txn = self.balance_transactions.get(match.group(1))
            if txn is None:
                message = f"No such balance transaction: '{match.group(1)}'"
                return 404, _error(404, message, code="resource_missing"), {}
            return 200, txn, {}
        return 404, _error(404, f"Unrecognized request URL (GET: {path})"), {}

    def _list_events(self, query: dict[str, str]) -> Obj:
        with self._lock:
            ordered = [(e["created"], seq, e) for seq, e in enumerate(self.events)]
        ordered.sort(key=lambda t: (t[0], t[1]), reverse=True)  # newest first, like Stripe
        position = {e["id"]: (created, seq) for created, seq, e in ordered}
        matching = [
            (created, seq, e) for created, seq, e in ordered if _created_matches(created, query)
        ]
        limit = min(int(query.get("limit", "10")), self.max_page)
        if "starting_after" in query:
            cursor = position[query["starting_after"]]
            older = [t for t in matching if (t[0], t[1]) < cursor]
            page, has_more = older[:limit], len(older) > limit
        elif "ending_before" in query:
            cursor = position[query["ending_before"]]
            newer = [t for t in matching if (t[0], t[1]) > cursor]
            page, has_more = newer[-limit:], len(newer) > limit
        else:
            page, has_more = matching[:limit], len(matching) > limit
        return {
            "object": "list",
            "data": [e for _, _, e in page],
            "has_more": has_more,
            "url": "/v1/events",
        }


def _created_matches(created: int, query: dict[str, str]) -> bool:
    checks = {
        "created": lambda bound: created == bound,
        "created[gt]": lambda bound: created > bound,
        "created[gte]": lambda bound: created >= bound,
        "created[lt]": lambda bound: created < bound,
        "created[lte]": lambda bound: created <= bound,
    }
    return all(check(int(query[key])) for key, check in checks.items() if key in query)


def _error(status: int, message: str, *, code: str | None = None) -> Obj:
    error: Obj = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    if code:
        error["code"] = code
    return {"error": error}


def _handler_for(fake: FakeStripe) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = fake.answer(method, self.path, headers)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", f"req_fake{len(fake.requests)}")
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: failing tests show the recorded requests instead

    return Handler
