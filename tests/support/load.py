"""A small asyncio load client: N concurrent clients against a live stack, for a bounded time.

Used by the CI load test (tests/load/) and by `bench/load.py`. Roles:
- uploaders post one JPEG after another to `POST /v1/scans`;
- readers fetch a random accepted scan (and now and then a history page);
- streamers follow the newest accepted scan's events (SSE) for at most `sse_hold_s`, then the
  next one.
Every response's status is counted; a transport error (timeout, reset) is counted apart.
Loopback only: the base URL is the stack's 127.0.0.1 address.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class LoadReport:
    clients: int
    roles: dict[str, int]
    duration_s: float
    statuses: Counter[str] = field(default_factory=Counter)  # "upload 202", "read 200", ...
    transport_errors: Counter[str] = field(default_factory=Counter)
    upload_latencies_s: list[float] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    sse_streams: int = 0
    sse_events: int = 0

    def count(self, predicate: Any) -> int:
        return sum(n for key, n in self.statuses.items() if predicate(int(key.split()[1])))

    @property
    def server_errors(self) -> int:
        return self.count(lambda s: s >= 500)

    def upload_percentile(self, q: float) -> float:
        lat = sorted(self.upload_latencies_s)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))]

    def summary(self) -> dict[str, Any]:
        lat = self.upload_latencies_s
        return {
            "clients": self.clients, "roles": self.roles, "duration_s": round(self.duration_s, 2),
            "uploads_accepted": len(self.accepted),
            "responses_5xx": self.server_errors,
            "statuses": dict(sorted(self.statuses.items())),
            "transport_errors": dict(self.transport_errors),
            "upload_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
            "upload_p99_ms": round(1000 * self.upload_percentile(99), 1) if lat else None,
            "upload_max_ms": round(1000 * max(lat), 1) if lat else None,
            "uploads_per_s": round(len(self.accepted) / self.duration_s, 2),
            "sse_streams": self.sse_streams, "sse_events": self.sse_events,
        }


def split_roles(clients: int, mix: str) -> dict[str, int]:
    """`upload`: every client uploads (the README's load table); `mixed`: half upload, a quarter
    read, a quarter hold SSE streams."""
    if mix == "upload":
        return {"upload": clients, "read": 0, "sse": 0}
    readers = clients // 4
    streamers = clients // 4
    return {"upload": clients - readers - streamers, "read": readers, "sse": streamers}


async def run_load(base_url: str, api_key: str, image: bytes, *, clients: int,
                   duration_s: float, mix: str = "mixed", sse_hold_s: float = 3.0,
                   request_timeout_s: float = 60.0) -> LoadReport:
    roles = split_roles(clients, mix)
    report = LoadReport(clients=clients, roles=roles, duration_s=duration_s)
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits,
                                 timeout=request_timeout_s) as http:
        deadline = time.monotonic() + duration_s
        tasks = []
        for role, n in roles.items():
            for i in range(n):
                worker = {"upload": _uploader, "read": _reader, "sse": _streamer}[role]
                tasks.append(asyncio.create_task(
                    worker(http, report, deadline, image=image, seed=i, sse_hold_s=sse_hold_s)))
        started = time.monotonic()
        await asyncio.gather(*tasks)
        report.duration_s = time.monotonic() - started
    return report


async def _uploader(http: httpx.AsyncClient, report: LoadReport, deadline: float, *,
                    image: bytes, seed: int, **_: Any) -> None:
    n = 0
    while time.monotonic() < deadline:
        n += 1
        t0 = time.monotonic()
        try:
            r = await http.post("/v1/scans", files={"file": (f"load-{seed}-{n}.jpg", image,
                                                             "image/jpeg")})
        except httpx.HTTPError as exc:
            report.transport_errors[f"upload {type(exc).__name__}"] += 1
            continue
        report.statuses[f"upload {r.status_code}"] += 1
        if r.status_code == 202:
            report.upload_latencies_s.append(time.monotonic() - t0)
            report.accepted.append(r.json()["id"])
        elif r.status_code == 503:  # told to come back: do as told
            await asyncio.sleep(float(r.headers.get("retry-after", "1")))


async def _reader(http: httpx.AsyncClient, report: LoadReport, deadline: float, *,
                  seed: int, **_: Any) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        if report.accepted and rng.random() < 0.9:
            path = f"/v1/scans/{rng.choice(report.accepted)}"
        else:
            path = "/v1/scans?page_size=20"
        try:
            r = await http.get(path)
        except httpx.HTTPError as exc:
            report.transport_errors[f"read {type(exc).__name__}"] += 1
            continue
        report.statuses[f"read {r.status_code}"] += 1
        await asyncio.sleep(0.05)


async def _streamer(http: httpx.AsyncClient, report: LoadReport, deadline: float, *,
                    sse_hold_s: float, **_: Any) -> None:
    while time.monotonic() < deadline:
        if not report.accepted:
            await asyncio.sleep(0.1)
            continue
        scan_id = report.accepted[-1]
        until = min(deadline, time.monotonic() + sse_hold_s)
        try:
            async with http.stream("GET", f"/v1/scans/{scan_id}/events") as r:
                report.statuses[f"sse {r.status_code}"] += 1
                report.sse_streams += 1
                if r.status_code == 200:
                    await asyncio.wait_for(_read_events(r, report), max(until - time.monotonic(),
                                                                        0.01))
        except TimeoutError:
            pass  # held for the whole window: let go and follow a newer scan
        except httpx.HTTPError as exc:
            report.transport_errors[f"sse {type(exc).__name__}"] += 1


async def _read_events(response: httpx.Response, report: LoadReport) -> None:
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            report.sse_events += 1


async def wait_until_final(base_url: str, api_key: str, timeout_s: float) -> dict[str, int]:
    """Poll the tenant's history until nothing is queued or processing; returns the counts per
    state (raises TimeoutError with them if the time runs out)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        while True:
            counts = {}
            for state in ("queued", "processing", "succeeded", "failed"):
                r = await http.get("/v1/scans", params={"state": state, "page_size": 1})
                r.raise_for_status()
                counts[state] = r.json()["total"]
            if counts["queued"] == 0 and counts["processing"] == 0:
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"not final after {timeout_s:.0f}s: {counts}")
            await asyncio.sleep(1.0)
