"""CSV export benchmark: 1M ledger rows exported over HTTP and by the CLI, against psql \\copy.

    .venv/bin/python bench/export.py --ledger-rows 1000000

One run, all on this machine over 127.0.0.1, bounded, stopping by itself:

1. a scratch database (DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/postgres, is
   only the admin connection), migrated with `roi migrate`, seeded through the project's own
   tables with bench/metrics.py's `seed` (ledger rows only: charges, fees, refunds, disputes,
   20 streams, usd and eur with part of them settled in usd, one eur->usd FX rate per day);
2. the reference, in the same run: `psql -c "\\copy (SELECT ...) TO FILE CSV HEADER"` of the
   same rows (every column of the period's ledger rows, in the export's order), --runs times;
   and, to split the cost, psql \\copy of the export's own SQL (formatting and conversion in
   PostgreSQL, no Python, no HTTP);
3. `roi serve` (one worker): GET /api/export/ledger.csv of the whole period with curl to a
   file, --runs times, with a finance-role API token made for the run in the scratch database
   (exports need that role); the server's peak memory (VmHWM from /proc, which covers its
   whole life) and its memory before the first export;
4. `roi export ledger --output FILE` (progress bar on) --runs times, with its peak memory
   (ru_maxrss of the child, measured by a wrapper process that runs nothing else);
5. checks: HTTP and CLI files are the same bytes, one line per ledger row plus the header;
   a table with the best time of each, the ratio to the reference, PASS/FAIL (<= 1.5x the
   reference, peak memory <= 150 MB), and the scratch database dropped (--keep keeps it).

Exit status: 0 when every target passed, 1 when one missed, 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/export.py` from anywhere
    sys.path.insert(0, str(ROOT))

from bench.metrics import (  # noqa: E402
    App,
    BenchError,
    free_port,
    local_admin_url,
    migrate,
    say,
    scratch_database,
    seed,
    table_facts,
    wait_for_quiet,
)

VENV_BIN = Path(sys.executable).parent
OUT = ROOT / "bench" / "out" / "export"
RATIO_TARGET = 1.5
MEMORY_TARGET_MB = 150.0

# The reference: the same rows, every column, plain; what a DBA would type.
REFERENCE_SQL = (
    "SELECT booked_at, stream, kind, entry_key, event_id, charge_id, object_id,"
    " balance_transaction, amount, currency, settlement_amount, settlement_currency"
    " FROM ledger_entries WHERE booked_at >= '{start}' AND booked_at < '{end}'"
    " ORDER BY booked_at, entry_key"
)


def psql_copy(url: str, select_sql: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
         f"\\copy ({select_sql}) TO '{out}' WITH (FORMAT csv, HEADER)"],
        check=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - started


def vm_kb(pid: int, field: str) -> int:
    """VmHWM (peak resident set) or VmRSS of a process, in kB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for process {pid}")


def finance_token(url: str) -> str:
    """Exports need the finance role: a token for this run, made in the scratch database before
    the app starts (so it prints no first-admin token into its log)."""
    from sqlalchemy import create_engine

    from app.auth.principal import Role
    from app.auth.tokens import create_token

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            _, token = create_token(conn, name=f"bench-export-{time.time_ns()}",
                                    role=Role.FINANCE, created_by="bench/export.py")  # fmt: skip
    finally:
        engine.dispose()
    return token


def http_export(port: int, params: dict[str, str], out: Path, token: str) -> float:
    url = f"http://127.0.0.1:{port}/api/export/ledger.csv?{urlencode(params)}"
    # The header through curl's config on stdin: the token stays out of the process list.
    config = f'header = "Authorization: Bearer {token}"\n'
    started = time.perf_counter()
    done = subprocess.run(["curl", "-sS", "--fail", "-K", "-", "-o", str(out), url],
                          input=config.encode(), timeout=600, check=False)  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"curl {url} failed ({done.returncode})")
    return elapsed


# Runs the CLI as its only child and prints the child's peak RSS (kB): RUSAGE_CHILDREN of
# this wrapper covers nothing else.
CLI_WRAPPER = """
import resource, subprocess, sys, time
started = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stderr=subprocess.DEVNULL)
elapsed = time.perf_counter() - started
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def cli_export(url: str, params: dict[str, str], out: Path) -> tuple[float, int]:
    cmd = [str(VENV_BIN / "roi"), "export", "ledger", "--start", params["start"],
           "--end", params["end"], "--tz", params["tz"], "--output", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", CLI_WRAPPER, *cmd],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"roi export failed ({done.returncode}): {done.stderr[-2000:]}")
    elapsed, peak_kb = done.stdout.split()
    return float(elapsed), int(peak_kb)


def export_sql(url: str, params: dict[str, str]) -> str:
    """The export's own COPY query, as SQL psql can run (parameters inlined)."""
    from app.database import make_engine
    from app.exports import ledger_query
    from app.metrics.filters import build_filter
    from app.settings import Settings

    f = build_filter(start=params["start"], end=params["end"], tz=params["tz"])
    engine = make_engine(Settings(database_url=url))
    try:
        query = ledger_query(f, "usd")
        compiled = query.compile(
            dialect=engine.dialect,
            compile_kwargs={"literal_binds": True, "render_postcompile": True},
        )
        return str(compiled)
    finally:
        engine.dispose()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--ledger-rows", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=365, help="the data spans this many days")
    p.add_argument("--chunk", type=int, default=500_000, help="rows per INSERT statement")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each; the best counts")
    p.add_argument("--tz", default="UTC", help="zone the times are written in")
    p.add_argument("--quiet-wait", type=float, default=120,
                   help="seconds to wait for an idle machine")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the scratch database")
    p.add_argument("--reuse", metavar="DBNAME", help="measure a kept database, no seeding")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)
    # What bench/metrics.py's `seed` reads: ledger rows only, on one connection.
    args.tasks, args.seed_jobs = 0, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin_url = local_admin_url()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    now = datetime.now(UTC).replace(microsecond=0)
    with scratch_database(admin_url, args.keep, args.reuse) as (dbname, url):
        say(f"scratch database {dbname}; roi migrate")
        migrate(url, OUT / "migrate.log")
        if not args.reuse:
            say(f"seeding {args.ledger_rows:,} ledger rows through the project's tables")
            results["seed"] = seed(url, args, now)
            say(f"seeded in {results['seed']['seed_seconds']:.0f} s")
        facts = table_facts(url)["ledger_entries"]
        say(f"ledger_entries: {facts['rows']:,} rows, {facts['table_bytes'] / 1e6:,.0f} MB")
        # The whole data: from the day before the first row to the day after the last.
        first_day = (now - timedelta(days=args.days + 2)).date().isoformat()
        params = {"start": first_day, "end": (now + timedelta(days=2)).date().isoformat()}
        params["tz"] = args.tz
        start_utc = f"{params['start']} 00:00:00+00"
        end_utc = f"{params['end']} 00:00:00+00"
        if args.tz != "UTC":
            raise BenchError("--tz other than UTC: the reference's period is cut in UTC")
        reference_sql = REFERENCE_SQL.format(start=start_utc, end=end_utc)
        own_sql = export_sql(url, params)
        say(f"machine: {wait_for_quiet(args.quiet_wait)}")

        timings: dict[str, list[float]] = {"reference": [], "psql_export_sql": [], "http": [],
                                           "cli": []}  # fmt: skip
        cli_peaks: list[int] = []
        files = {name: OUT / f"{name}.csv" for name in timings}
        token = finance_token(url)
        app = App(url, free_port(), OUT / "app.log")
        try:
            app.start()
            assert app.proc is not None
            idle_kb = vm_kb(app.proc.pid, "VmRSS")
            for run in range(args.runs):
                timings["reference"].append(psql_copy(url, reference_sql, files["reference"]))
                timings["psql_export_sql"].append(psql_copy(url, own_sql, files["psql_export_sql"]))
                timings["http"].append(http_export(app.port, params, files["http"], token))
                elapsed, peak = cli_export(url, params, files["cli"])
                timings["cli"].append(elapsed)
                cli_peaks.append(peak)
                say(
                    f"run {run + 1}: reference {timings['reference'][-1]:.2f} s, export SQL by"
                    f" psql {timings['psql_export_sql'][-1]:.2f} s, HTTP"
                    f" {timings['http'][-1]:.2f} s, CLI {elapsed:.2f} s"
                )
            server_peak_kb = vm_kb(app.proc.pid, "VmHWM")
        finally:
            app.stop()

        lines = files["http"].read_bytes().count(b"\n")
        same = sha256(files["http"]) == sha256(files["cli"])
        sizes = {name: path.stat().st_size for name, path in files.items()}
        for path in files.values():
            path.unlink(missing_ok=True)

    best = {name: min(values) for name, values in timings.items()}
    ratio_http = best["http"] / best["reference"]
    ratio_cli = best["cli"] / best["reference"]
    server_mb, cli_mb, idle_mb = server_peak_kb / 1024, max(cli_peaks) / 1024, idle_kb / 1024
    checks = {
        f"HTTP <= {RATIO_TARGET}x reference": ratio_http <= RATIO_TARGET,
        f"CLI <= {RATIO_TARGET}x reference": ratio_cli <= RATIO_TARGET,
        f"server peak memory <= {MEMORY_TARGET_MB:.0f} MB": server_mb <= MEMORY_TARGET_MB,
        f"CLI peak memory <= {MEMORY_TARGET_MB:.0f} MB": cli_mb <= MEMORY_TARGET_MB,
        "HTTP and CLI files are the same bytes": same,
        "one line per ledger row, plus the header": lines == facts["rows"] + 1,
    }
    say()
    say(f"{'':<34} {'best':>8} {'runs':>24} {'ratio':>7} {'size':>9}")
    for name, label in (
        ("reference", "reference: psql \\copy of the rows"),
        ("psql_export_sql", "psql \\copy of the export's SQL"),
        ("http", "GET /api/export/ledger.csv"),
        ("cli", "roi export ledger"),
    ):
        runs = ", ".join(f"{t:.2f}" for t in timings[name])
        say(
            f"{label:<34} {best[name]:>7.2f}s {runs:>24} "
            f"{best[name] / best['reference']:>6.2f}x {sizes[name] / 1e6:>7.0f}MB"
        )
    # Each run measures the reference right before the exports: on a shared machine the ratio
    # within a run is steadier than best against best.
    per_run = {
        name: statistics.median(
            t / ref for t, ref in zip(timings[name], timings["reference"], strict=True)
        )
        for name in ("psql_export_sql", "http", "cli")
    }
    say(
        "median of per-run ratios: export SQL by psql {psql_export_sql:.2f}x, HTTP {http:.2f}x,"
        " CLI {cli:.2f}x".format(**per_run)
    )
    say(f"server memory: {idle_mb:.0f} MB before the first export, peak {server_mb:.0f} MB")
    say(f"CLI peak memory: {cli_mb:.0f} MB")
    for label, ok in checks.items():
        say(f"  {'PASS' if ok else 'FAIL'}  {label}")
    results.update(
        rows=facts["rows"], timings=timings, best=best, ratio_http=ratio_http,
        ratio_cli=ratio_cli, per_run_ratios=per_run, server_idle_mb=idle_mb,
        server_peak_mb=server_mb, cli_peak_mb=cli_mb, bytes=sizes, checks=checks,
    )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        say(f"could not run: {exc}")
        sys.exit(2)
