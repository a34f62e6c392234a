"""Helpers for driving the clinician's page in Chromium: pages, sign-in, uploads, screenshots,
and pausing a stack's worker so that a scan stays in flight for as long as a test needs."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.support.stack import LiveStack

PAGE_SIZE = 15  # rows per history page (api/web/history.js)
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCREENSHOT_MAX_BYTES = 300 * 1024


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, quiet (no background traffic to confuse request counts)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def open_page(browser: Browser, *, width: int = 1280, height: int = 800,
              scheme: str = "light") -> Iterator[tuple[Page, list[str]]]:
    """A fresh context (own storage) and page; yields the page and its uncaught errors."""
    context = browser.new_context(viewport={"width": width, "height": height},
                                  color_scheme=scheme, accept_downloads=True)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page, errors
    finally:
        context.close()


def sign_in(page: Page, stack: LiveStack) -> None:
    expect(page.locator("#view-signin")).to_be_visible()
    page.fill("#api-key", stack.api_key)
    page.press("#api-key", "Enter")  # the form works from the keyboard
    expect(page.locator("#view-analyse")).to_be_visible()
    expect(page.locator("#tenant-name")).to_have_text(stack.tenant)


def upload_via_picker(page: Page, paths: list[Path]) -> None:
    page.set_input_files("#file-input", [str(p) for p in paths])


def open_case(page: Page, stack: LiveStack, path: Path, *, timeout_ms: int) -> str:
    """Sign in, upload one file, wait for its result and show it; returns the scan's id."""
    page.goto(f"{stack.base_url}/app")
    sign_in(page, stack)
    upload_via_picker(page, [path])
    done = page.locator(f'.scan-item[data-filename="{path.name}"][data-state="succeeded"]')
    expect(done).to_have_count(1, timeout=timeout_ms)
    done.locator("button").click()
    expect(page.locator("#verdict")).to_be_visible()
    scan_id = done.get_attribute("data-scan-id")
    assert scan_id
    return scan_id


def image_loaded(page: Page, img: Locator, *, timeout_ms: int = 10_000) -> bool:
    """Wait for an <img> to finish loading; True when it decoded (has a width)."""
    for _ in range(timeout_ms // 100):
        if img.evaluate("i => i.complete"):
            break
        page.wait_for_timeout(100)
    return bool(img.evaluate("i => i.naturalWidth > 0"))


def drop_files(page: Page, selector: str, paths: list[Path]) -> None:
    """Drag files from the desktop onto `selector`: a real DataTransfer carrying File objects."""
    payload = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle("""(files) => {
        const transfer = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], f.name));
        }
        return transfer;
    }""", payload)
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event(selector, event, {"dataTransfer": transfer})


def save_screenshot(page: Page, name: str, *, full_page: bool = False) -> bytes:
    """Take a screenshot; with NEUROSCAN_SCREENSHOTS=1 also write docs/screenshots/<name>.png,
    reduced to a 256-colour palette so each stays small enough for the repository."""
    # No focus ring from the last click in the picture.
    page.evaluate("() => document.activeElement instanceof HTMLElement && document.activeElement.blur()")
    png = page.screenshot(full_page=full_page, animations="disabled", caret="hide")
    assert png.startswith(b"\x89PNG")
    if os.environ.get("NEUROSCAN_SCREENSHOTS") == "1":
        with Image.open(io.BytesIO(png)) as shot:
            small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE)
            out = io.BytesIO()
            small.save(out, format="PNG", optimize=True)
        data = out.getvalue()
        assert len(data) < SCREENSHOT_MAX_BYTES, f"{name}.png is {len(data)} bytes"
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        (SCREENSHOT_DIR / f"{name}.png").write_bytes(data)
    return png


def _worker_pids(stack: LiveStack) -> list[int]:
    """The Celery worker process(es) of this stack: the only ones consuming its own queue."""
    queue = stack.env["QUEUE_NAME"]
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Its queues are named after QUEUE_NAME (QUEUE_NAME.interactive, ...).
        if b"celery" in b" ".join(argv) and any(arg.startswith(queue.encode()) for arg in argv):
            pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def worker_paused(stack: LiveStack) -> Iterator[None]:
    """Freeze the stack's worker (SIGSTOP) so scans stay queued; always thawed (SIGCONT)."""
    pids = _worker_pids(stack)
    assert pids, "the stack's worker process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
