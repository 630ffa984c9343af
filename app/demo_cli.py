"""`roi demo`: the command's options here, its work in app/demo.py.

Kept apart so that every other `roi` command starts without importing what the demo needs
(uvicorn, httpx, the Stripe event samples): `roi` imports all its commands to list them.
"""

from __future__ import annotations

from typing import Annotated

import typer


def register(cli: typer.Typer) -> None:
    @cli.command()
    def demo(
        host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
        days: Annotated[int, typer.Option(help="Days of history to seed.")] = 365,
        every: Annotated[
            float, typer.Option(help="Seconds between live payments (0: none).")
        ] = 3.0,
    ) -> None:
        """Start the app, seed a year of demo figures through its webhook and API, then keep
        sending live payments. Ctrl-C stops it."""
        from app.demo import run_demo

        run_demo(host, port, days, every)
