"""Observability: Prometheus metrics, structured logs with request ids, readiness and the
data-health snapshot."""

from app.observability.health import health_snapshot

__all__ = ["health_snapshot"]
