"""The `roi` entry point (app/launch.py): the command runs with the garbage collector on, and
what is left at exit is out of the final collection's reach."""

from __future__ import annotations

import gc
import subprocess
import sys
import tomllib

import pytest

import app.cli
from app import launch
from app.settings import PROJECT_ROOT


def test_roi_is_the_launcher() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["roi"] == "app.launch:main"


# Run in a fresh interpreter (this one has imported app.cli already): records whether the
# collector is on when the import of app.cli starts, then runs `roi --help` through the launcher.
PROBE = """
import gc, sys
seen = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "app.cli":
            seen.append(gc.isenabled())

sys.meta_path.insert(0, Watch())
sys.argv = ["roi", "--help"]
from app.launch import main
try:
    main()
except SystemExit as ended:
    print(seen, ended.code, gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)
"""


def test_roi_imports_the_app_with_the_collector_off() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stderr.strip().splitlines()[-1] == "[False] 0 True True", done.stderr
    assert "Usage: roi" in done.stdout


def test_the_command_runs_with_the_collector_on_and_its_objects_end_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector_on: list[bool] = []

    def command() -> None:  # as typer ends every command: SystemExit with its status
        collector_on.append(gc.isenabled())
        raise SystemExit(3)

    monkeypatch.setattr(app.cli, "main", command)
    frozen_before = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as ended:
            launch.main()

        assert ended.value.code == 3  # the command's status, unchanged
        assert collector_on == [True]  # `roi serve` runs with it as usual
        assert gc.isenabled()
        assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()  # this test process goes on
