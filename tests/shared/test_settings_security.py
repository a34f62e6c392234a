"""SECRET_KEY: weak values stop the process whatever ENVIRONMENT says, unless development (or
test) is asked for by name; the embedded default makes and keeps a random one under VAR_DIR."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings, secret_key_problem

STRONG = "3f9a1c7e5b2d48f06a1e9c3b7d5f2a8e"  # 32 random hex characters
WEAK = ["", "changeme", "change-me", "secret", "dev-secret-change-me", "k1",
        "short-but-not-placeholder", "a" * 64, "please-change-this-secret-key-before-release"]
PG = "postgresql://postgres@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("environment", [None, "production"])
@pytest.mark.parametrize("secret", [s for s in WEAK if s])
def test_a_weak_secret_is_refused_unless_development_is_asked_for(
        environment: str | None, secret: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="refusing to start: SECRET_KEY"):
        Settings(environment=environment, secret_key=secret, var_dir=tmp_path)
    for lax in ("development", "test"):
        assert Settings(environment=lax, secret_key=secret, var_dir=tmp_path).secret_key == secret


def test_what_counts_as_weak() -> None:
    assert secret_key_problem(STRONG) is None
    assert all(secret_key_problem(s) for s in WEAK)
    assert Settings(environment="production", secret_key=STRONG).secret_key == STRONG


def test_the_embedded_default_makes_a_secret_once_and_keeps_it(tmp_path: Path) -> None:
    var = tmp_path / "var"  # does not exist yet: a fresh clone
    first = Settings(environment=None, var_dir=var)
    path = var / "secret_key"
    assert first.uses_sqlite and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key_problem(first.secret_key) is None and len(first.secret_key) == 64
    # Every later start (API, worker, CLI) reads the same one: links and pseudonyms survive.
    assert Settings(environment=None, var_dir=var).secret_key == first.secret_key
    assert Settings(environment="production", var_dir=var).secret_key == first.secret_key


def test_a_server_deployment_without_a_secret_is_refused(tmp_path: Path) -> None:
    # API and workers on other hosts would each make their own: links made by one would not
    # verify on another. So outside the embedded (SQLite) deployment nothing is generated.
    with pytest.raises(ValidationError, match="SECRET_KEY is not set"):
        Settings(environment=None, database_url=PG, var_dir=tmp_path)
    assert not (tmp_path / "secret_key").exists()
    (tmp_path / "secret_key").write_text(STRONG + "\n")  # an operator may put one there
    assert Settings(environment=None, database_url=PG, var_dir=tmp_path).secret_key == STRONG


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENVIRONMENT", "SECRET_KEY", "DATABASE_URL", "BROKER_URL", "VAR_DIR")}
    env.update({"PYTHONPATH": str(REPO), "PORT": "1"}, **extra)
    return env


@pytest.mark.parametrize("extra", [
    {"SECRET_KEY": "changeme"},                                    # ENVIRONMENT unset
    {"SECRET_KEY": "changeme", "ENVIRONMENT": "production"},
    {"SECRET_KEY": "not-long-enough-1234", "ENVIRONMENT": "production"},
    {"DATABASE_URL": PG},                                          # a server deployment, no key
])
def test_the_api_process_refuses_to_start(extra: dict[str, str], tmp_path: Path) -> None:
    """The real command, as a container or systemd would run it: it exits, saying why."""
    done = subprocess.run([sys.executable, "-m", "cli.main", "api"], cwd=tmp_path,
                          env=_env(tmp_path, **extra), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to start: SECRET_KEY" in done.stderr, done.stderr[-2000:]


def test_a_fresh_embedded_start_needs_no_secret(tmp_path: Path) -> None:
    """`make run` on a fresh clone: no ENVIRONMENT, no SECRET_KEY; the CLI starts and the
    secret it made is there for the API and worker started next."""
    done = subprocess.run([sys.executable, "-m", "cli.main", "migrate"], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    secret = (tmp_path / "var" / "secret_key").read_text().strip()
    assert secret_key_problem(secret) is None


def test_trusted_proxies_read_as_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.service import proxy_options

    assert Settings(environment="test").trusted_proxies == []
    assert proxy_options([]) == {"proxy_headers": False, "forwarded_allow_ips": None}
    for text in ("10.0.0.5, 172.18.0.0/16", '["10.0.0.5", "172.18.0.0/16"]'):
        monkeypatch.setenv("TRUSTED_PROXIES", text)
        trusted = Settings(environment="test").trusted_proxies
        assert trusted == ["10.0.0.5", "172.18.0.0/16"]
        assert proxy_options(trusted) == {"proxy_headers": True, "forwarded_allow_ips": trusted}
