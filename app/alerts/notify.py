"""The outgoing webhook: each alert as a Slack-compatible JSON message (`text` + `blocks`).

A delivery is retried within one evaluation with exponential backoff and jitter, a bounded
number of times; past that bound the alert stays unsent and the next evaluation tries again.
"""

from __future__ import annotations

from typing import Any

import httpx
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from app.alerts.store import StoredAlert

SEND_ATTEMPTS = 4  # per evaluation; with the waits below, about 7 s before giving up
SEND_INITIAL_WAIT = 1.0  # seconds before the first retry, doubling, plus up to 1 s of jitter
SEND_MAX_WAIT = 10.0
SEND_TIMEOUT = 5.0  # seconds per POST


class DeliveryFailed(Exception):
    """The receiver did not accept the alert (network error or a non-2xx answer)."""


class _Retryable(DeliveryFailed):
    """Worth retrying now: the network failed, the receiver erred (5xx) or throttled (429)."""


def slack_message(alert: StoredAlert) -> dict[str, Any]:
    """`text` for clients that only read it (and notifications), `blocks` for Slack."""
    icon = (
        ":chart_with_downwards_trend:"
        if alert.direction == "drop"
        else ":chart_with_upwards_trend:"
    )
    return {
        "text": alert.message,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} {alert.message}"}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"stream `{alert.stream}` · {alert.metric} {alert.direction} · "
                        f"detected on {alert.detected_on.isoformat()} · alert #{alert.id}",
                    }
                ],
            },
        ],
    }


class AlertWebhook:
    """POSTs alerts to one URL (ROI_ALERT_WEBHOOK_URL)."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = SEND_ATTEMPTS,
        initial_wait: float = SEND_INITIAL_WAIT,
        max_wait: float = SEND_MAX_WAIT,
        timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._initial_wait = initial_wait
        self._max_wait = max_wait
        self._timeout = timeout

    def send(self, alert: StoredAlert) -> None:
        """Deliver one alert; raises DeliveryFailed once the retries are spent."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            # Exponential backoff plus jitter, so that processes retrying the same receiver
            # spread out (written as a sum: `wait_exponential_jitter` changed across versions).
            wait=wait_exponential(multiplier=self._initial_wait, max=self._max_wait)
            + wait_random(0, self._initial_wait),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        with httpx.Client(timeout=self._timeout) as client:
            for attempt in retrying:
                with attempt:
                    self._post(client, alert)

    def _post(self, client: httpx.Client, alert: StoredAlert) -> None:
        try:
            response = client.post(self.url, json=slack_message(alert))
        except httpx.HTTPError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return
        error = f"HTTP {response.status_code}: {response.text[:200]}"
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(error)
        # A 4xx (bad URL, revoked webhook) will not heal within seconds; the next evaluation
        # tries again, so an operator who fixes the URL loses nothing.
        raise DeliveryFailed(error)
