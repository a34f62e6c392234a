"""Point this test process's settings (and everything cached from them) somewhere else."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


def reset_caches() -> None:
    """Forget settings, engines, storage and the API's producer, so the next use re-reads."""
    from api import intake
    from shared import storage
    from shared.db.session import forget_engines
    from shared.settings import get_settings

    get_settings.cache_clear()
    forget_engines()
    storage._configured_storage.cache_clear()
    intake.producer.cache_clear()


@contextlib.contextmanager
def settings_env(**env: str) -> Iterator[None]:
    """Run a block with these settings (environment variables), then restore everything."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name.upper(), value)
        reset_caches()
        try:
            yield
        finally:
            reset_caches()
    reset_caches()
