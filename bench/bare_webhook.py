"""The ceiling of the HTTP layer alone, for `bench/ingest.py --ceiling`.

The same server stack as `roi serve` (FastAPI on uvicorn, its default HTTP parser and event
loop, no access log) answering `POST /webhooks/stripe` with the webhook's 200 body after
reading the request body, and nothing else: no signature check, no JSON parsing, no
database. Whatever rate this reaches under the same load is an upper bound for any webhook
built on this stack on this machine. `/healthz` is there for the bench to know it is up.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.get("/healthz")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@app.post("/webhooks/stripe")
async def webhook(request: Request) -> Response:
    await request.body()
    return Response(b'{"received":true}', media_type="application/json")
