"""Fixtures shared by every test folder: databases, Redis, tiny real weights, live stacks.

`live_stack` is a factory: `live_stack("embedded")` or `live_stack("pg")` starts (once per
session and set of arguments) uvicorn plus a real Celery worker and returns a `LiveStack`
with `base_url`, `api_key`, `tenant` and `client()`. Ask for your own `port_range` (and
`env`) to get a stack of your own; ports 18000-18999 are the pipeline tests'.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Tests opt in to weak secrets (short SECRET_KEYs in unit tests) explicitly, as a developer
# would; unset, the settings refuse them (tests/shared/test_settings_security.py).
os.environ.setdefault("ENVIRONMENT", "test")

from tests.support.stack import (  # noqa: E402
    REDIS_BASE_URL,
    LiveStack,
    create_pg_database,
    drop_pg_database,
    start_stack,
)

TINY_MODEL_NAME = "neuroscan-tiny"
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[1] / "models"
SHIPPED_MODEL_NAME = "neuroscan-cnn"


def _stack_model(tiny_model_dir: Path) -> tuple[Path, str]:
    """Tests run on tiny weights; screenshots for the docs (NEUROSCAN_SCREENSHOTS=1) show the
    shipped model, so that the pictures show what a clinician would see."""
    import os

    shipped = SHIPPED_MODEL_DIR / f"{SHIPPED_MODEL_NAME}.card.json"
    if os.environ.get("NEUROSCAN_SCREENSHOTS") == "1" and shipped.is_file():
        return SHIPPED_MODEL_DIR, SHIPPED_MODEL_NAME
    return tiny_model_dir, TINY_MODEL_NAME


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (plain `postgresql://` URL), dropped afterwards."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis database 1, reachable. Not flushed: every stack has its own queue (and deletes it
    when it stops), and a flush would pull tasks from under a test session running beside."""
    import redis

    url = f"{REDIS_BASE_URL}/1"
    assert redis.Redis.from_url(url).ping()
    return url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real (tiny, seeded) weights and card, written by the production save path."""
    import keras

    from worker.model import ModelConfig, build_model, save_model_files

    out = tmp_path_factory.mktemp("tiny-model")
    keras.utils.set_random_seed(1234)
    config = ModelConfig.tiny(name=TINY_MODEL_NAME)
    save_model_files(build_model(config), config, out,
                     training={"note": "untrained, seeded; for tests"})
    return out


@pytest.fixture(scope="session")
def stack_model_card(tiny_model_dir: Path) -> dict[str, Any]:
    """The card of the model the test stacks serve (tiny weights, or the shipped model when
    screenshots are being made)."""
    import json

    model_dir, name = _stack_model(tiny_model_dir)
    return json.loads((model_dir / f"{name}.card.json").read_text())


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
               redis_url: str) -> Iterator[Callable[..., LiveStack]]:
    stacks: dict[Any, LiveStack] = {}

    def start(backend: str = "embedded", *, port_range: tuple[int, int] = (18000, 18999),
              env: dict[str, str] | None = None, tenant: str = "test-hospital") -> LiveStack:
        key = (backend, port_range, tuple(sorted((env or {}).items())), tenant)
        if key not in stacks:
            root = tmp_path_factory.mktemp(f"stack-{backend}")
            model_dir, model_name = _stack_model(tiny_model_dir)
            stacks[key] = start_stack(root, model_dir, backend=backend,
                                      port_range=port_range, redis_url=redis_url,
                                      model_name=model_name, tenant=tenant, env=env)
        return stacks[key]

    try:
        yield start
    finally:
        for stack in stacks.values():
            stack.stop()
