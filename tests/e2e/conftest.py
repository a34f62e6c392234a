"""Fixtures of the browser tests: one Chromium per module, a fresh page per test that fails
the test on any uncaught error in the page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.support import chromium, open_page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser) as (page, errors):
        yield page
        assert errors == [], f"uncaught errors in the page: {errors}"
