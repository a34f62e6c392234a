"""The API process never imports TensorFlow/Keras, nor the worker and research packages."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import asyncio, json, sys
import httpx
from shared.db.migrate import upgrade_to_head
from shared.db.session import sync_session
from shared.db.tenants import issue_key

upgrade_to_head()
with sync_session() as session:
    key = issue_key(session, "probe").key
import api.main
app = api.main.create_app()
PNG = open(sys.argv[1], "rb").read()

async def exercise():
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers=headers) as c:
        statuses = [(await c.get(p)).status_code for p in ("/", "/openapi.json", "/v1/me")]
        r = await c.post("/v1/scans", files={"file": ("a.png", PNG, "image/png")})
        statuses.append(r.status_code)
        statuses.append((await c.get(f"/v1/scans/{r.json()['id']}")).status_code)
        return statuses

statuses = asyncio.run(exercise())
loaded = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps({"statuses": statuses, "loaded": loaded}))
"""


def test_api_process_has_no_tensorflow(tmp_path: Path) -> None:
    from tests.support.images import brain_png

    image = tmp_path / "scan.png"
    image.write_bytes(brain_png(2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "BROKER_"))}
    env.update(DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
               BROKER_URL=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
               MEDIA_DIR=str(tmp_path / "media"))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(image)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [200, 200, 200, 202, 200]
    loaded = set(report["loaded"])
    assert "fastapi" in loaded and "sqlalchemy" in loaded  # the probe really ran the app
    assert not loaded & {"tensorflow", "keras", "worker", "research", "cv2"}, loaded


def test_api_and_shared_never_import_worker_or_research() -> None:
    offenders = []
    for folder in ("api", "shared"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in ("worker", "research", "tensorflow", "keras"):
                        offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
