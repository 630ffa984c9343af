"""The access policy: one table, path prefix and method -> what a request needs.

The most specific rule wins: the longest matching path, then a rule naming the method over one
for any method. A path no rule covers needs admin (default-deny): a route someone adds without
deciding who may use it is hidden from everyone but admins until a rule says otherwise, which
fails safe and shows up at once (tests/app/test_auth_matrix.py fails for any route of the app
that only the default covers). The dashboard is covered as a whole by `/dashboard/`, so its new
pages and Dash's own routes under it are open to viewers without a new rule.

A websocket handshake counts as GET; HEAD counts as GET.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.auth.principal import Role


class Open(StrEnum):
    """Requests that need no principal."""

    PUBLIC = "public"
    # /metrics: public unless ROI_METRICS_PUBLIC=0, then admin (see `requirement`).
    METRICS = "metrics"


Requirement = Role | Open

ANY = ("*",)
READ = ("GET",)


@dataclass(frozen=True)
class Rule:
    """`path` covers itself and whatever follows a `/` after it (`/api/metrics` covers
    `/api/metrics/streams`, not `/api/metricsx`); a path ending in `/` or `-` covers
    everything that starts with it (`/_dash-`); `exact` covers the path alone."""

    path: str
    methods: Sequence[str]
    needs: Requirement
    why: str
    exact: bool = False

    def covers(self, path: str, method: str) -> bool:
        if "*" not in self.methods and method not in self.methods:
            return False
        if path == self.path:
            return True
        if self.exact or not path.startswith(self.path):
            return False
        return self.path.endswith(("/", "-")) or path[len(self.path)] == "/"

    @property
    def specificity(self) -> tuple[int, int]:
        return (len(self.path), 0 if "*" in self.methods else 1)


POLICY: tuple[Rule, ...] = (
    # Open
    Rule("/webhooks/stripe", ANY, Open.PUBLIC, "Stripe's signature protects it", exact=True),
    Rule("/healthz", READ, Open.PUBLIC, "liveness probes carry no credentials", exact=True),
    Rule("/readyz", READ, Open.PUBLIC, "readiness probes carry no credentials", exact=True),
    Rule("/metrics", READ, Open.METRICS, "Prometheus scrapes; counts, no money", exact=True),
    Rule("/signin", ("GET", "POST"), Open.PUBLIC, "where a token is exchanged for a session"),
    Rule("/signout", ("POST",), Open.PUBLIC, "clearing one's own cookie needs no role"),
    Rule("/favicon.ico", READ, Open.PUBLIC, "the browser's tab icon", exact=True),
    # Viewer: the dashboard, the figures, the API's documentation
    Rule("/", READ, Role.VIEWER, "redirects to the dashboard", exact=True),
    Rule("/dashboard/", ANY, Role.VIEWER, "the dashboard, its callbacks and its websocket"),
    Rule("/dashboard", READ, Role.VIEWER, "redirects to /dashboard/", exact=True),
    # Dash's own routes, should the dashboard ever be mounted at the root
    Rule("/_dash-", ANY, Role.VIEWER, "Dash's layout, callbacks and websocket"),
    Rule("/_reload-hash", READ, Role.VIEWER, "Dash's hot reload"),
    Rule("/_favicon.ico", READ, Role.VIEWER, "Dash's favicon"),
    Rule("/assets/", READ, Role.VIEWER, "Dash's static files"),
    Rule("/docs", READ, Role.VIEWER, "the API's documentation"),
    Rule("/redoc", READ, Role.VIEWER, "the API's documentation"),
    Rule("/openapi.json", READ, Role.VIEWER, "the API's schema", exact=True),
    Rule("/api/metrics", READ, Role.VIEWER, "the figures the dashboard shows"),
    Rule("/api/ledger/totals", READ, Role.VIEWER, "ledger totals per stream"),
    Rule("/api/health", READ, Role.VIEWER, "data health, as the dashboard shows it"),
    Rule("/api/alerts", READ, Role.VIEWER, "trend alerts, as the dashboard shows them"),
    Rule("/api/tasks/unpriced", READ, Role.VIEWER, "the unpriced count the dashboard shows"),
    # Finance: what reconciling needs
    Rule("/api/export", READ, Role.FINANCE, "CSV exports (audited by the export)"),
    Rule("/api/audit", READ, Role.FINANCE, "the audit log: the ledger audit view"),
    Rule("/api/prices", READ, Role.FINANCE, "prices and their change log, behind costs"),
    Rule("/api/fx-rates", READ, Role.FINANCE, "the rates behind converted figures"),
    # Ingest (or admin)
    Rule("/api/tasks", ("POST",), Role.INGEST, "task-cost intake", exact=True),
    # Admin: every change of reference data, and tokens
    Rule("/api/prices", ANY, Role.ADMIN, "changing prices re-prices tasks"),
    Rule("/api/fx-rates", ANY, Role.ADMIN, "changing rates changes converted figures"),
    Rule("/api/streams", ANY, Role.ADMIN, "stream mappings re-attribute history"),
    Rule("/api/tokens", ANY, Role.ADMIN, "tokens grant access"),
)

DEFAULT = Rule("", ANY, Role.ADMIN, "no rule covers this path: admin only (default-deny)")


def rule_for(path: str, method: str) -> Rule:
    method = "GET" if method in ("HEAD", "WEBSOCKET") else method
    matching = [rule for rule in POLICY if rule.covers(path, method)]
    return max(matching, key=lambda rule: rule.specificity, default=DEFAULT)


def requirement(rule: Rule, *, metrics_public: bool) -> Requirement:
    if rule.needs is Open.METRICS:
        return Open.PUBLIC if metrics_public else Role.ADMIN
    return rule.needs
