"""The API process's memory through the whole hostile suite (goal: under 200 MiB).

    .venv/bin/python -m bench.hostile_rss [--large PNG...] [--out bench/results/hostile_rss.json]

A real `neuroscan api` process (uvicorn, its own interpreter) on an embedded SQLite database
and broker in a scratch folder; this process sends it, over loopback HTTP, every file of
tests/api/test_hostile.py alone (`POST /v1/scans`, ZIPs to `POST /v1/batches`), then all of
them with a good slice in one batch, then the request-level cases: 2,000 tiny parts in one
request, huge and non-ASCII headers, non-ASCII media signatures, no key with a large body, a
chunked body over the cap. The server's RSS (VmRSS) is sampled every 10 ms from /proc;
reported: after start-up and one good upload (before), the peak during each phase, and
after the suite (2 s idle). With `--large`, legitimate large images (within the limits) are
sent afterwards and reported apart: they are not hostile, but they are what the door must
judge without decoding them whole.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "hostile_rss.json"
GOAL_MIB = 200


def _status_mib(pid: int, field: str) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text)[1]) / 1024  # type: ignore[index]


class Sampler:
    """VmRSS of one process every 10 ms; `phase(name)` records each phase's peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.current = self.peak = _status_mib(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.current = _status_mib(self.pid, "VmRSS")
            self.peak = max(self.peak, self.current)
            time.sleep(0.01)

    @contextmanager
    def phase(self, results: dict[str, Any], name: str) -> Iterator[None]:
        self.peak = self.current
        t0 = time.perf_counter()
        yield
        time.sleep(0.05)
        results[name] = {"peak_mib": round(self.peak, 1), "end_mib": round(self.current, 1),
                         "seconds": round(time.perf_counter() - t0, 2)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def api_server(root: Path, archive_cap: int) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """A `neuroscan api` process on a fresh embedded database; yields (process, url, key)."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{root / 'db.sqlite'}",
           "BROKER_URL": f"sqla+sqlite:///{root / 'broker.db'}", "MEDIA_DIR": str(root / "media"),
           "SECRET_KEY": "hostile-rss-" + "s" * 40, "ENVIRONMENT": "test", "PORT": str(port),
           "MAX_ARCHIVE_BYTES": str(archive_cap), "MAX_REQUEST_BYTES": str(64 << 20),
           "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING"}
    for name in ("CLOUDINARY_URL", "CLOUDINARY_CLOUD_NAME", "CLOUDINARY_API_KEY",
                 "CLOUDINARY_API_SECRET"):
        env.pop(name, None)
    setup = ("from shared.db.migrate import upgrade_to_head\n"
             "from shared.db.session import sync_session\n"
             "from shared.db.tenants import issue_key\n"
             "upgrade_to_head()\n"
             "with sync_session() as s: print(issue_key(s, 'hostile').key)\n")
    key = subprocess.run([sys.executable, "-c", setup], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    neuroscan = Path(sys.executable).with_name("neuroscan")
    proc = subprocess.Popen([str(neuroscan), "api", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start: {proc.stderr.read()[-3000:]!r}")  # type: ignore[union-attr]
            time.sleep(0.2)
        yield proc, url, key
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _check(status_ok: Callable[[int], bool], response: Any, what: str,
           errors: list[str]) -> None:
    if not status_ok(response.status_code):
        errors.append(f"{what}: {response.status_code} {response.text[:200]}")


def run(large: list[Path] | None = None) -> dict[str, Any]:
    import httpx

    sys.path.insert(0, str(ROOT))
    from tests.api import test_hostile as suite

    phases: dict[str, Any] = {}
    errors: list[str] = []  # any 5xx (or a refused file answered 2xx) is a finding
    five_hundreds = 0
    with tempfile.TemporaryDirectory() as tmp, \
            api_server(Path(tmp), suite.ARCHIVE_CAP) as (proc, url, key):
        auth = {"Authorization": f"Bearer {key}"}
        client = httpx.Client(base_url=url, headers=auth, timeout=120)
        good = client.post("/v1/scans", files={"file": ("good.png", suite.GOOD, "image/png")})
        _check(lambda s: s == 202, good, "good slice", errors)
        time.sleep(1)
        sampler = Sampler(proc.pid)
        before = sampler.current
        sent = 0

        def post(name: str, data: bytes) -> httpx.Response:
            nonlocal sent, five_hundreds
            field = "files" if name.endswith(".zip") else "file"
            path = "/v1/batches" if field == "files" else "/v1/scans"
            r = client.post(path, files={field: (name, data, "application/octet-stream")})
            sent += 1
            five_hundreds += r.status_code >= 500
            return r

        with sampler.phase(phases, "each_refused_file_alone"):
            for name, data in suite.REFUSED.items():
                _check(lambda s: 400 <= s < 500, post(name, data), name, errors)
        with sampler.phase(phases, "each_odd_file_alone"):
            for name, data in suite.EITHER.items():
                _check(lambda s: s < 500, post(name, data), name, errors)
        with sampler.phase(phases, "all_in_one_batch"):
            files = [("files", ("good.png", suite.GOOD, "image/png"))]
            files += [("files", (n, d, "application/octet-stream"))
                      for n, d in {**suite.REFUSED, **suite.EITHER}.items()]
            r = client.post("/v1/batches", files=files)
            sent += 1
            _check(lambda s: s == 202, r, "one batch of everything", errors)
        with sampler.phase(phases, "two_thousand_tiny_parts"):
            r = client.post("/v1/batches", files=[("files", (f"{i}.png", b"x", "image/png"))
                                                  for i in range(2000)])
            sent += 1
            _check(lambda s: 400 <= s < 500, r, "2,000 parts", errors)
        with sampler.phase(phases, "headers_and_signatures"):
            for headers in ({"Authorization": "Bearer " + "x" * 60000},
                            {"Authorization": "Bearer nsk_\u00e9".encode()},
                            {"Last-Event-ID": ("\u00e9" * 100).encode()}):
                r = httpx.get(f"{url}/v1/me", headers=headers, timeout=30)
                sent += 1
                _check(lambda s: s < 500, r, f"header {str(headers)[:40]}", errors)
            for sig in ("%C3%A9", "%00", "%FF%FE", "a" * 10000):
                r = httpx.get(f"{url}/media/results/x.png?expires=99999999999&sig={sig}",
                              timeout=30)
                sent += 1
                _check(lambda s: 400 <= s < 500, r, f"signature {sig[:10]}", errors)
        with sampler.phase(phases, "no_key_large_body_and_chunked_over_cap"):
            r = httpx.post(f"{url}/v1/scans", content=b"x" * (8 << 20),
                           headers={"Content-Type": "multipart/form-data; boundary=x"},
                           timeout=30)
            sent += 1
            _check(lambda s: s == 401, r, "no key, 8 MiB body", errors)

            def chunks() -> Iterator[bytes]:
                yield (b'--x\r\nContent-Disposition: form-data; name="files"; '
                       b'filename="a.png"\r\nContent-Type: image/png\r\n\r\n')
                for _ in range(80):
                    yield b"y" * (1 << 20)

            try:
                r = httpx.post(f"{url}/v1/batches", content=chunks(), timeout=30,
                               headers={**auth, "Content-Type": "multipart/form-data; boundary=x"})
                _check(lambda s: s == 413, r, "chunked over the cap", errors)
            except httpx.TransportError:
                pass  # the server answered 413 and closed while we were still sending
            sent += 1
        time.sleep(2)
        after = sampler.current
        result: dict[str, Any] = {
            "requests": sent, "server_errors": five_hundreds, "findings": errors,
            "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1),
            "peak_mib": max(p["peak_mib"] for p in phases.values()),
            "phases": phases,
        }
        if large:
            extra: dict[str, Any] = {}
            for path in large:
                data = path.read_bytes()
                with sampler.phase(extra, path.name):
                    r = client.post("/v1/scans", files={"file": (path.name, data, "image/png")})
                extra[path.name].update(status=r.status_code, file_mib=round(len(data) / 2**20, 1))
            time.sleep(2)
            result["large_legitimate_images"] = {**extra,
                                                 "rss_after_mib": round(sampler.current, 1)}
        result["vm_hwm_mib"] = round(_status_mib(proc.pid, "VmHWM"), 1)
        sampler.stop()
        client.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=Path, nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = {"what": "RSS of a `neuroscan api` process through tests/api/test_hostile.py "
                      "(bench/hostile_rss.py)", "goal_mib": GOAL_MIB,
              "machine": {"cpus": os.cpu_count()}, **run(args.large)}
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}, indent=2))


if __name__ == "__main__":
    main()
