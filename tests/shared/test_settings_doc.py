"""The configuration reference is generated from the Settings class and stays in step with it;
a multi-host deployment on one host's disk refuses to start."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared import settings_doc
from shared.settings import Settings
from shared.storage import topology_problem

ROOT = Path(__file__).resolve().parents[2]


def test_readme_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_doc.replace_readme_table(readme) == readme, (
        "README's settings table is stale: run `neuroscan settings --write`")


def test_env_example_is_generated_from_settings() -> None:
    assert (ROOT / ".env.example").read_text() == settings_doc.env_example(), (
        ".env.example is stale: run `neuroscan settings --write`")


def test_every_setting_is_documented_once() -> None:
    assert settings_doc.undocumented() == []
    listed = [n for s in settings_doc.sections() for e in s.entries for n in e.names]
    assert sorted(listed) == sorted(Settings.model_fields)


def test_env_example_defaults_read_back_as_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncommenting every line of .env.example changes nothing: each default is written in a
    form the settings parser reads back to the same value."""
    assignments = re.findall(r"^# ([A-Z][A-Z0-9_]*)=(.*)$", settings_doc.env_example(), re.M)
    assert len(assignments) == len(Settings.model_fields)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    defaults = Settings(_env_file=None)
    for name, value in assignments:
        if value:  # an empty value means "unset", which the environment cannot say otherwise
            monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == defaults


def test_grouping_follows_the_comments() -> None:
    source = '''
class Settings:
    # --- first ---
    # Shared words for two fields.
    port: int = 1
    host: str = "x"

    max_upload_bytes: int = 2  # its own words
    max_batch_files: int = 3

    # --- second ---
    log_level: str = "INFO"
'''
    sections = settings_doc.sections(source)
    assert [s.title for s in sections] == ["first", "second"]
    first = sections[0].entries
    assert [(e.names, e.meaning) for e in first] == [
        (["port", "host"], "Shared words for two fields."),
        (["max_upload_bytes", "max_batch_files"], "its own words"),
    ]
    assert sections[1].entries[0].names == ["log_level"]
    assert sections[1].entries[0].meaning == ""  # reported by undocumented() for the real file


def test_local_disk_is_refused_for_several_hosts() -> None:
    one_host = Settings(_env_file=None)
    assert topology_problem(one_host) is None
    several = Settings(_env_file=None, deployment_hosts=3)
    problem = topology_problem(several)
    assert problem is not None and "CLOUDINARY_URL" in problem and "MEDIA_DIR_SHARED" in problem
    assert topology_problem(Settings(_env_file=None, deployment_hosts=3, media_dir_shared=True)) is None
    assert topology_problem(Settings(_env_file=None, deployment_hosts=3,
                                     cloudinary_url="cloudinary://k:s@cloud")) is None


@pytest.mark.parametrize("command", [["worker"], ["api", "--port", "18931"]])
def test_processes_refuse_to_start_on_local_disk_beside_other_hosts(
        command: list[str], tmp_path: Path) -> None:
    """The real worker and API processes exit non-zero, saying why, before serving anything."""
    env = {**os.environ, "DEPLOYMENT_HOSTS": "2", "VAR_DIR": str(tmp_path),
           "MEDIA_DIR": str(tmp_path / "media"),
           "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
           "BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.sqlite"}
    env.pop("CLOUDINARY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "cli.main", *command], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "DEPLOYMENT_HOSTS=2" in proc.stdout + proc.stderr
