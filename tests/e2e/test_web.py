"""The clinician's page at /app, driven in Debian's Chromium against a live stack: uvicorn and
a real Celery worker with tiny real weights, on the embedded deployment (and one check on
PostgreSQL + Redis + the Cloudinary stand-in, for images under the page's CSP).

Set NEUROSCAN_SCREENSHOTS=1 to (re)write docs/screenshots/*.png from these runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Request, Route, expect

from shared.labels import CLASSES, DISPLAY_NAMES
from shared.reports.wording import DISCLAIMER, confidence_band
from tests.e2e.support import (
    PAGE_SIZE,
    drop_files,
    image_loaded,
    open_case,
    save_screenshot,
    sign_in,
    upload_via_picker,
    worker_paused,
)
from tests.support.images import brain_jpeg, brain_png, brain_slice, colour_photo_png
from tests.support.stack import LiveStack, wait_for_batch

pytestmark = pytest.mark.slow

PORTS = (19000, 19999)
REDIS_DB2 = "redis://127.0.0.1:6379/2"
TENANT = "St Mary's Hospital"
OFFLINE = "Cannot reach the NeuroScan service; retrying…"
DONE_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def stack(live_stack) -> LiveStack:
    return live_stack("embedded", port_range=PORTS, tenant=TENANT)


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Realistic synthetic MRI slices (Colin27 anatomy + lesions) and two unacceptable files."""
    folder = tmp_path_factory.mktemp("slices")
    files = {
        "glioma": ("case-glioma.png", brain_png(101, "glioma")),
        "pituitary": ("case-pituitary.jpg", brain_jpeg(102, "pituitary")),
        "meningioma": ("case-meningioma.png", brain_png(103, "meningioma")),
        "notumor": ("case-notumor.png", brain_png(104, "notumor")),
        "photo": ("holiday-photo.png", colour_photo_png(256)),
        "text": ("referral-letter.txt", b"Dear colleague, please find the scan attached.\n"),
    }
    paths = {}
    for key, (name, data) in files.items():
        paths[key] = folder / name
        paths[key].write_bytes(data)
    return paths


def test_page_and_assets_are_served_with_a_strict_policy(stack: LiveStack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        page = client.get("/app")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "img-src 'self' data: blob:" in csp and "unsafe" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        # Every script and stylesheet the page names is served, as the right type.
        names = re.findall(r'(?:src|href)="/app/static/([^"]+)"', page.text)
        assert {"app.css", "app.js", "theme.js"} <= set(names)
        for name in names:
            asset = client.get(f"/app/static/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["cache-control"] == "no-cache" and asset.headers["etag"]
            again = client.get(f"/app/static/{name}", headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304
        assert client.get("/app/static/app.js").headers["content-type"].startswith("text/javascript")
        missing = client.get("/app/static/../main.py")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert client.get("/app/", follow_redirects=False).headers["location"] == "/app"


def test_the_page_reads_event_streams_by_the_sse_rules(stack: LiveStack, page: Page) -> None:
    """The page's own parser, in the browser, on a stream cut at awkward places: CRLF split
    across chunks, a UTF-8 character split across chunks, comments, multi-line data, an id
    without data (kept for the next event), a retry hint and an unfinished last event."""
    page.goto(f"{stack.base_url}/app")
    result = page.evaluate("""async () => {
        const { readEventStream } = await import("/app/static/events.js");
        const utf8 = new TextEncoder();
        const name = utf8.encode("data: Müller\\n\\n");
        const split = name.indexOf(0xc3) + 1;  // inside the two bytes of "ü"
        const chunks = [
            utf8.encode(": keep-alive\\r\\n\\r"),
            utf8.encode("\\nid: 7\\r\\nevent: processing\\r\\ndata: {\\"a\\":"),
            utf8.encode("1}\\r\\n\\r\\n"),
            utf8.encode("data: line one\\ndata:line two\\n\\n"),
            utf8.encode("id: 9\\n\\nretry: 1500\\n"),
            name.slice(0, split), name.slice(split),
            utf8.encode("data: never finished"),
        ];
        const body = new ReadableStream({ start(controller) {
            for (const chunk of chunks) controller.enqueue(chunk);
            controller.close();
        } });
        const events = [];
        const retries = [];
        await readEventStream(body, (e) => events.push(e), (ms) => retries.push(ms));
        return { events, retries };
    }""")
    assert result == {
        "events": [
            {"id": "7", "event": "processing", "data": '{"a":1}'},
            {"id": "7", "event": "message", "data": "line one\nline two"},
            {"id": "9", "event": "message", "data": "Müller"},
        ],
        "retries": [1500],
    }


def test_sign_in_refuses_a_wrong_key_then_uploads_go_live_without_a_key_in_any_url(
        stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    key_in_urls: list[str] = []
    event_requests: list[Request] = []

    def watch(request: Request) -> None:
        if stack.api_key in request.url:
            key_in_urls.append(request.url)
        if "/v1/" in request.url and request.url.endswith("/events"):
            event_requests.append(request)

    page.on("request", watch)
    page.goto(f"{stack.base_url}/app")
    expect(page.locator("#view-signin")).to_be_visible()
    save_screenshot(page, "sign-in")

    page.fill("#api-key", "ns_not-a-real-key")
    page.click("#signin-submit")
    expect(page.locator("#signin-error")).to_have_text(
        "That API key was not recognised. Check it and try again.")

    sign_in(page, stack)
    expect(page.locator("#tenant-name")).to_have_text(TENANT)

    # Two files through the picker (one batch), one dropped on the zone (a single scan).
    upload_via_picker(page, [slices["glioma"], slices["pituitary"]])
    drop_files(page, "#dropzone", [slices["meningioma"]])
    items = page.locator(".scan-item")
    expect(items).to_have_count(3)
    done = page.locator('.scan-item[data-state="succeeded"]')
    expect(done).to_have_count(3, timeout=DONE_TIMEOUT_MS)
    for item in done.all():
        expect(item.locator(".badge")).to_have_text("Done")
        expect(item.locator(".scan-detail")).to_have_text(re.compile(r"\d+\.\d%"))
    # Live status came over SSE read with fetch(): a Bearer header, never a key in a URL.
    assert any("/v1/batches/" in r.url for r in event_requests)
    assert all(r.all_headers().get("authorization") == f"Bearer {stack.api_key}" for r in event_requests), [(r.url, r.all_headers()) for r in event_requests]
    assert key_in_urls == []
    save_screenshot(page, "upload-list")


def test_result_shows_the_apis_record(stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    scan_id = open_case(page, stack, slices["glioma"], timeout_ms=DONE_TIMEOUT_MS)
    with stack.client() as client:
        scan = client.get(f"/v1/scans/{scan_id}").raise_for_status().json()
    prediction = scan["prediction"]
    expect(page.locator("#result-title")).to_have_text(slices["glioma"].name)
    expect(page.locator("#verdict-label")).to_have_text(DISPLAY_NAMES[prediction["label"]])
    # The band the PDF and FHIR reports give, in the same words.
    expect(page.locator("#confidence-band")).to_have_text(confidence_band(prediction["confidence"]))
    bars = page.locator("#probabilities li")
    expect(bars).to_have_count(4)
    assert [b.get_attribute("data-label") for b in bars.all()] == list(CLASSES)
    for bar in bars.all():
        shown = float(bar.locator(".bar-value").inner_text().rstrip("%"))
        assert shown == pytest.approx(100 * prediction["probabilities"][bar.get_attribute("data-label")], abs=0.051)
    model = page.locator("#model-info")
    expect(model).to_contain_text(scan["model"]["name"])
    expect(model).to_contain_text(scan["model"]["version"])
    expect(model).to_contain_text(scan["model"]["sha256"][:12])
    expect(page.locator("#result-body .disclaimer-inline")).to_have_text(DISCLAIMER)
    expect(page.locator("#disclaimer")).to_have_text(DISCLAIMER)

    # Both images come through their signed links and really load under the CSP.
    for img in (page.locator(".pane img").first, page.locator(".layer img.heat")):
        expect(img).to_be_visible()
        assert image_loaded(page, img), img.get_attribute("src")


def test_viewer_opacity_toggle_zoom_and_pan(stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    open_case(page, stack, slices["glioma"], timeout_ms=DONE_TIMEOUT_MS)
    heat = page.locator(".layer img.heat")
    expect(heat).to_be_visible()

    # Opacity slider, heatmap toggle.
    opacity = lambda: float(heat.evaluate("i => getComputedStyle(i).opacity"))  # noqa: E731
    before = opacity()
    page.locator("#heat-opacity").fill("80")
    assert opacity() == pytest.approx(0.8) and opacity() != before
    page.locator("#heat-opacity").focus()
    page.keyboard.press("Home")
    assert opacity() == 0.0
    expect(page.locator(".opacity-value")).to_have_text("0%")
    page.keyboard.press("End")
    assert opacity() == 1.0
    page.locator("#heat-opacity").fill("45")
    page.locator("label.switch").click()
    expect(heat).to_be_hidden()
    expect(page.locator("#heat-opacity")).to_be_disabled()
    page.locator("label.switch").click()
    expect(heat).to_be_visible()

    # Zoom and pan: keyboard, buttons, wheel and drag; both panes move together.
    layers = page.locator(".layer")
    stage = page.locator(".stage").first
    stage.focus()
    page.keyboard.press("+")
    expect(page.locator(".zoom-level")).to_have_text("125%")
    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator(".zoom-level")).to_have_text("156%")
    transforms = {layer.evaluate("l => l.style.transform") for layer in layers.all()}
    assert len(transforms) == 1 and "scale(1.5625)" in transforms.pop()
    box = stage.bounding_box()
    assert box is not None
    before_drag = layers.first.evaluate("l => l.style.transform")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 30, steps=4)
    page.mouse.up()
    moved = layers.first.evaluate("l => l.style.transform")
    assert moved != before_drag and moved.endswith("scale(1.5625)")
    page.keyboard.press("0")
    expect(page.locator(".zoom-level")).to_have_text("100%")
    page.mouse.wheel(0, -200)
    expect(page.locator(".zoom-level")).not_to_have_text("100%")
    page.get_by_role("button", name="Fit").click()
    expect(page.locator(".zoom-level")).to_have_text("100%")
    save_screenshot(page, "result-light")


def test_pdf_report_is_one_click_away(stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    scan_id = open_case(page, stack, slices["glioma"], timeout_ms=DONE_TIMEOUT_MS)
    with page.expect_download() as download_info:
        page.click("#download-pdf")
    download = download_info.value
    assert download.suggested_filename == f"neuroscan-report-case-glioma-{scan_id[:8]}.pdf"
    assert Path(download.path()).read_bytes().startswith(b"%PDF")


def test_theme_persists_across_a_reload_tablet_layout_and_sign_out(
        stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    scan_id = open_case(page, stack, slices["glioma"], timeout_ms=DONE_TIMEOUT_MS)
    # Theme: switches, persists across a reload (the session keeps the key and the list).
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "light")
    page.click("#theme-toggle")
    expect(html).to_have_attribute("data-theme", "dark")
    expect(page.locator("#theme-toggle")).to_have_attribute("aria-label", "Switch to light theme")
    page.reload()
    expect(html).to_have_attribute("data-theme", "dark")
    expect(page.locator("#tenant-name")).to_have_text(TENANT)
    expect(page.locator('.scan-item[data-state="succeeded"]')).to_have_count(1)
    page.locator(f'.scan-item[data-scan-id="{scan_id}"] button').click()
    expect(page.locator("#verdict")).to_be_visible()
    expect(page.locator(".layer img.heat")).to_be_visible()
    save_screenshot(page, "result-dark")

    # Tablet width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 768, "height": 1024})
    expect(page.locator("#verdict")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 768
    save_screenshot(page, "tablet", full_page=True)

    page.click("#sign-out")
    expect(page.locator("#view-signin")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('neuroscan.apiKey')") is None


def test_unacceptable_files_are_explained_in_words(
        stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    with stack.client() as client:
        refusal = client.post("/v1/scans", files={"file": (slices["text"].name, slices["text"].read_bytes())})
    assert refusal.status_code == 415
    sentence = refusal.json()["error"]["message"]

    page.goto(f"{stack.base_url}/app")
    sign_in(page, stack)
    # Alone: the single-scan route refuses it.
    upload_via_picker(page, [slices["text"]])
    item = page.locator(f'.scan-item[data-filename="{slices["text"].name}"]')
    expect(item).to_have_attribute("data-state", "rejected")
    expect(item.locator(".badge")).to_have_text("Not accepted")
    expect(item.locator(".scan-detail")).to_have_text(sentence)
    assert "{" not in item.inner_text() and "error" not in item.inner_text().lower()

    # In a batch: the text file is refused by name, the photograph fails the input gate,
    # the slice goes through.
    upload_via_picker(page, [slices["photo"], slices["text"], slices["notumor"]])
    expect(page.locator(f'.scan-item[data-filename="{slices["text"].name}"][data-state="rejected"]')).to_have_count(2)
    photo = page.locator(f'.scan-item[data-filename="{slices["photo"].name}"]')
    expect(photo).to_have_attribute("data-state", "failed", timeout=DONE_TIMEOUT_MS)
    expect(page.locator(f'.scan-item[data-filename="{slices["notumor"].name}"]')).to_have_attribute(
        "data-state", "succeeded", timeout=DONE_TIMEOUT_MS)
    photo.locator("button").click()
    warning = page.locator("#gate-warning")
    expect(warning).to_contain_text("does not look like a brain MRI slice")
    expect(warning).to_contain_text("No prediction was made")
    expect(page.locator("#verdict")).to_have_count(0)
    # Its report documents the refusal.
    with page.expect_download() as download_info:
        page.click("#download-pdf")
    assert Path(download_info.value.path()).read_bytes().startswith(b"%PDF")
    assert "{" not in page.locator("#result-body").inner_text()
    save_screenshot(page, "gate-warning")


def test_history_filters_and_pages(stack: LiveStack, page: Page) -> None:
    with stack.client() as client:
        # Enough scans for more than one page, whatever the other tests left behind.
        files = [("files", (f"history-{i:02d}.png", brain_png(200 + i), "image/png"))
                 for i in range(PAGE_SIZE + 1)]
        batch = client.post("/v1/batches", files=files).raise_for_status().json()
        wait_for_batch(client, batch["id"])
        total = client.get("/v1/scans", params={"page_size": 1}).json()["total"]
        label = client.get("/v1/scans", params={"state": "succeeded", "page_size": 1}).json()["items"][0]["prediction"]["label"]
        with_label = client.get("/v1/scans", params={"label": label, "page_size": 1}).json()["total"]
        failed = client.get("/v1/scans", params={"state": "failed", "page_size": 1}).json()["total"]

    page.goto(f"{stack.base_url}/app")
    sign_in(page, stack)
    page.click("#tab-history")
    rows = page.locator("#history-rows tr")
    expect(rows).to_have_count(PAGE_SIZE)
    pages = -(-total // PAGE_SIZE)
    expect(page.locator("#history-page")).to_have_text(
        f"1–{PAGE_SIZE} of {total} scans · page 1 of {pages}")
    expect(page.locator("#history-prev")).to_be_disabled()
    save_screenshot(page, "history")
    page.click("#history-next")
    expect(page.locator("#history-page")).to_contain_text(f"page 2 of {pages}")
    expect(rows).to_have_count(min(PAGE_SIZE, total - PAGE_SIZE))

    page.select_option("#filter-label", label)
    expect(page.locator("#history-page")).to_contain_text(f"of {with_label} scan")
    expect(page.locator(f'#history-rows tr:not([data-label="{label}"])')).to_have_count(0)
    expect(rows).to_have_count(min(PAGE_SIZE, with_label))

    page.select_option("#filter-label", "")
    page.select_option("#filter-state", "failed")
    if failed:
        expect(page.locator('#history-rows tr:not([data-state="failed"])')).to_have_count(0)
        expect(rows).to_have_count(min(PAGE_SIZE, failed))
    else:
        expect(page.locator("#history-empty")).to_be_visible()

    # Opening a row shows that scan in the result view.
    page.select_option("#filter-state", "succeeded")
    expect(page.locator('#history-rows tr:not([data-state="succeeded"])')).to_have_count(0)
    expect(rows).not_to_have_count(0)
    first = rows.first
    scan_id = first.get_attribute("data-scan-id")
    first.get_by_role("button").click()
    expect(page.locator("#view-analyse")).to_be_visible()
    expect(page.locator("#result-body")).to_have_attribute("data-scan-id", scan_id or "")
    expect(page.locator("#verdict")).to_be_visible()


def test_live_status_survives_an_unreachable_service(
        stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    page.goto(f"{stack.base_url}/app")
    sign_in(page, stack)

    # The service "goes away" for reads: every GET to the API fails at the network level
    # (what the page sees while the API restarts). The upload itself still gets through.
    def outage(route: Route) -> None:
        if route.request.method == "GET":
            route.abort("connectionrefused")
        else:
            route.continue_()

    page.route(re.compile(r".*/(v1/.*|healthz)$"), outage)
    upload_via_picker(page, [slices["glioma"]])
    banner = page.locator("#connection")
    expect(banner).to_have_text(OFFLINE)
    item = page.locator(".scan-item").first
    page.wait_for_timeout(2500)
    expect(item).not_to_have_attribute("data-state", "succeeded")
    page.unroute(re.compile(r".*/(v1/.*|healthz)$"))
    # Back: the stream reconnects by itself, the scan reaches its final state, the banner goes.
    expect(item).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(banner).to_be_hidden(timeout=15_000)


@pytest.fixture(scope="module")
def cloud_stack(live_stack) -> LiveStack:
    """PostgreSQL, Redis (db 2) and Cloudinary through the real SDK against the stand-in."""
    return live_stack("pg", port_range=PORTS, tenant=TENANT, env={"BROKER_URL": REDIS_DB2})


def _first_event(stack: LiveStack, path: str) -> str:
    """The first event of the real stream at `path`, read with the API key, as sent."""
    with stack.client() as client, client.stream("GET", path) as response:
        block: list[str] = []
        for line in response.iter_lines():
            if line:
                block.append(line)
            elif block and not all(b.startswith(":") for b in block):
                return "\n".join(block) + "\n\n"
            else:
                block = []
    raise AssertionError(f"no event on {path}")


def test_a_dropped_stream_resumes_after_the_last_event(
        cloud_stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    page.goto(f"{cloud_stack.base_url}/app")
    sign_in(page, cloud_stack)
    first: list[str] = []
    requests: list[Request] = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/events") else None)

    def cut_after_first_event(route: Route) -> None:
        # The real stream's first event, then the connection ends, as when a proxy drops it.
        path = route.request.url.removeprefix(cloud_stack.base_url)
        first.append(_first_event(cloud_stack, path))
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=first[0])

    with worker_paused(cloud_stack):  # the scan stays queued while the stream is cut
        page.route("**/events", cut_after_first_event, times=1)
        upload_via_picker(page, [slices["meningioma"]])
        item = page.locator(".scan-item").first
        expect(item).to_have_attribute("data-state", "queued")
        event_id = re.search(r"^id: ?(\d+)$", first[0] if first else "", re.M)
        for _ in range(100):
            if event_id and any(r.all_headers().get("last-event-id") == event_id.group(1) for r in requests):
                break
            page.wait_for_timeout(100)
        assert event_id, first
        assert requests[0].all_headers().get("last-event-id") is None
        assert any(r.all_headers().get("last-event-id") == event_id.group(1) for r in requests[1:])
    # The resumed stream brings the rest once the worker runs again.
    expect(item).to_have_attribute("data-state", "succeeded", timeout=DONE_TIMEOUT_MS)
    item.locator("button").click()
    expect(page.locator("#verdict")).to_be_visible()


def test_images_from_cloud_storage_load_under_the_policy(
        cloud_stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    page.goto(f"{cloud_stack.base_url}/app")
    sign_in(page, cloud_stack)
    cases = [slices["glioma"], slices["meningioma"], slices["notumor"]]
    with worker_paused(cloud_stack):  # hold them in the queue long enough to be seen there
        upload_via_picker(page, cases)
        expect(page.locator('.scan-item[data-state="queued"]')).to_have_count(3)
        expect(page.locator('.scan-item[data-state="queued"] .badge').first).to_have_text("Queued")
        page.locator(f'.scan-item[data-filename="{slices["glioma"].name}"] button').click()
        expect(page.locator("#result-body .callout-info")).to_contain_text("waiting for a free worker")
        expect(page.locator("#download-pdf")).to_be_disabled()
        save_screenshot(page, "live-status")
    expect(page.locator('.scan-item[data-state="succeeded"]')).to_have_count(3, timeout=DONE_TIMEOUT_MS)
    # The open scan's view follows it from queued to its result.
    expect(page.locator("#verdict")).to_be_visible()
    page.locator(f'.scan-item[data-filename="{slices["notumor"].name}"] button').click()
    expect(page.locator("#verdict")).to_be_visible()
    assert cloud_stack.standin is not None
    images = page.locator(".viewer img")
    expect(images).to_have_count(3)  # the original, and the original under the heatmap
    for img in images.all():
        assert (img.get_attribute("src") or "").startswith(cloud_stack.standin.url)
        assert image_loaded(page, img), img.get_attribute("src")


# --- an API restart under the page, on a stack of its own ---------------------------------

RESTART_PORTS = (19500, 19999)  # a port range of its own: this stack's API goes away


@pytest.fixture(scope="module")
def restart_stack(live_stack) -> LiveStack:
    """PostgreSQL, Redis and the Cloudinary stand-in, as in production; no other test uses it."""
    return live_stack("pg", port_range=RESTART_PORTS, tenant=TENANT, env={"BROKER_URL": REDIS_DB2})


def test_the_page_keeps_working_across_an_api_restart(
        restart_stack: LiveStack, page: Page, slices: dict[str, Path]) -> None:
    stack = restart_stack
    page.goto(f"{stack.base_url}/app")
    sign_in(page, stack)
    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page ever reloads
    streams: list[int] = []  # statuses of the page's event-stream responses, in order
    page.on("response", lambda r: streams.append(r.status) if r.url.endswith("/events") else None)
    banner = page.locator("#connection")
    with worker_paused(stack):  # the scan stays queued, so the page is streaming throughout
        upload_via_picker(page, [slices["notumor"]])
        item = page.locator(".scan-item").first
        expect(item).to_have_attribute("data-state", "queued")
        for _ in range(100):
            if 200 in streams:
                break
            page.wait_for_timeout(100)
        assert streams == [200], streams
        expect(banner).to_be_hidden()

        # While the API is down the page says it cannot reach the service.
        before_restart = len(streams)
        # A plain SIGTERM restart: uvicorn cuts this page's open stream after its graceful
        # shutdown timeout (5 s) instead of waiting for the scan to finish.
        stack.restart_api(grace_s=10, while_down=lambda: expect(banner).to_have_text(
            OFFLINE, timeout=30_000))
        # Back: the page opens a new stream by itself and the banner goes.
        for _ in range(300):
            if 200 in streams[before_restart:]:
                break
            page.wait_for_timeout(100)
        assert 200 in streams[before_restart:], streams
        expect(banner).to_be_hidden(timeout=30_000)
        expect(item).to_have_attribute("data-state", "queued")
    # The worker runs again: the new stream brings the result, without a reload.
    expect(item).to_have_attribute("data-state", "succeeded", timeout=DONE_TIMEOUT_MS)
    expect(item.locator(".badge")).to_have_text("Done")
    expect(page.locator("#verdict")).to_be_visible()
    expect(banner).to_be_hidden()
    assert page.evaluate("() => window.sameDocument") is True


@pytest.fixture(scope="module")
def dicom_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-bit MR DICOM of a synthetic slice: browsers cannot show it as it is."""
    from tests.support.dicomkit import mr_dataset, to_bytes

    path = tmp_path_factory.mktemp("dicom") / "case-mr.dcm"
    path.write_bytes(to_bytes(mr_dataset(brain_slice(105, "glioma") / 255.0, bits=12)))
    return path


def test_a_dicom_scan_is_shown_through_its_png_rendition(
        restart_stack: LiveStack, page: Page, dicom_slice: Path) -> None:
    page.goto(f"{restart_stack.base_url}/app")
    sign_in(page, restart_stack)
    upload_via_picker(page, [dicom_slice])
    item = page.locator(".scan-item").first
    expect(item).to_have_attribute("data-state", "succeeded", timeout=DONE_TIMEOUT_MS)
    expect(page.locator("#verdict")).to_be_visible()  # a single upload opens by itself
    with restart_stack.client() as client:
        scan = client.get(f"/v1/scans/{item.get_attribute('data-scan-id')}").raise_for_status().json()
    assert scan["format"] == "dicom" and "-preview" in scan["preview_url"]
    # The full viewer (original beside the heatmap), not the overlay-only DICOM fallback.
    original = page.locator(".pane img").first
    expect(original).to_have_attribute("alt", "Original MRI slice")
    expect(page.locator(".layer img.heat")).to_be_visible()
    assert image_loaded(page, original)
    assert original.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [256, 256]
    assert "-preview" in (original.get_attribute("src") or "")
