"""How an open dashboard learns, within milliseconds, that its figures changed.

Writers announce a committed change with PostgreSQL's NOTIFY on one channel; each web process
holds one LISTEN connection (`ChangeFeed`) and counts the notifications it receives. Dashboards
wait on that counter, so a thousand open dashboards still cost one idle connection per process,
and figures are recomputed once per change and view (see dashboards/data.py), not per viewer.

Who announces:
- Stripe events: the event writer, after its batch committed (ingest/event_writer.py). Not a
  trigger: a NOTIFY inside the ingest transaction would hold PostgreSQL's global notify lock
  until that transaction's commit is flushed, serialising the webhook's group commits.
- Tasks, prices, FX rates and stream mappings: statement triggers (migration 0007), so systems
  that write `execution_tasks` directly are covered too; those writes are not a hot path.

NOTIFY is delivered only on commit and never for a rolled-back write, so a dashboard never
reacts to figures it cannot read yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "roi_changes"
ANNOUNCE_SQL = f"NOTIFY {CHANNEL}"
RECONNECT_SECONDS = 1.0


class ChangeFeed:
    """A per-process counter of committed data changes, fed by LISTEN."""

    def __init__(self, conninfo: str, *, timeout: float = 2.0) -> None:
        self._conninfo = conninfo
        self._timeout = timeout
        self._version = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        # Payloads of the latest notifications. Notifications arrive in commit order, so once
        # a marker sent after some writes is here, the feed has heard those writes (tests and
        # the live benchmark wait on this).
        self.recent_payloads: deque[str] = deque(maxlen=256)

    @property
    def version(self) -> int:
        """Grows by at least one after every announced change this process has heard of."""
        return self._version

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="change-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def changed_since(self, version: int, *, timeout: float) -> int:
        """The version once it differs from `version`, or the same one after `timeout` s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._version == version:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self._version

    def _bump(self) -> None:
        self._version += 1
        # Wake every waiter, then re-arm: waiters compare versions, so none misses a change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=max(1, round(self._timeout))
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Whatever happened while we were not listening: assume it changed.
                    self._bump()
                    self.listening.set()
                    async for notify in conn.notifies():
                        if notify.payload:
                            self.recent_payloads.append(notify.payload)
                        self._bump()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be away; dashboards show a banner
                log.warning("change feed lost its connection (%s); retrying", exc)
            self.listening.clear()
            await asyncio.sleep(RECONNECT_SECONDS)
