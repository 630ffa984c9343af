"""The `roi` entry point (app/launch.py): the command runs with the garbage collector on, and
what is left at exit is out of the final collection's reach."""

from __future__ import annotations

import gc
import tomllib

import pytest

import app.cli
from app import launch
from app.settings import PROJECT_ROOT


def test_roi_is_the_launcher() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["roi"] == "app.launch:main"


def test_the_command_runs_with_the_collector_on_and_its_objects_end_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector_on: list[bool] = []

    def command() -> None:  # as typer ends every command: SystemExit with its status
        collector_on.append(gc.isenabled())
        raise SystemExit(3)

    monkeypatch.setattr(app.cli, "main", command)
    try:
        with pytest.raises(SystemExit) as ended:
            launch.main()

        assert ended.value.code == 3  # the command's status, unchanged
        assert collector_on == [True]  # `roi serve` runs with it as usual
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process goes on
