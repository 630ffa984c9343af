#!/usr/bin/env python3
"""Bootstrap for a fresh clone: `python3 dev.py demo`, `serve` or `test`.

Creates .venv with the project and its dev tools installed (again whenever pyproject.toml
changes), then runs the command inside it. Needs nothing but Python 3.11 and PyPI.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"

COMMANDS = {
    "demo": [str(BIN / "roi"), "demo"],
    "serve": [str(BIN / "roi"), "serve"],
    "test": [str(BIN / "python"), "-m", "pytest"],
    "roi": [str(BIN / "roi")],
}


def ensure_environment() -> None:
    if sys.version_info[:2] < (3, 11):  # noqa: UP036 - this file runs on any python3
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("installing the project into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(wanted)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 dev.py {{{'|'.join(COMMANDS)}}} [args...]")
    ensure_environment()
    command = COMMANDS[sys.argv[1]] + sys.argv[2:]
    os.chdir(ROOT)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
