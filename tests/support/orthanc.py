"""A real PACS for tests: Debian's Orthanc with its DICOMweb plugin, on loopback ports, with a
configuration and storage of the test's own (never the system service's)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def available() -> bool:
    return Path(ORTHANC_BIN).is_file() and Path(DICOMWEB_PLUGIN).is_file()


@dataclass
class Orthanc:
    root: Path
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, *, dicomweb_servers: dict[str, Any] | None = None,
              modalities: dict[str, list[Any]] | None = None) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "neuroscan-test-pacs", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "Plugins": [DICOMWEB_PLUGIN], "StableAge": 3600, "HttpTimeout": 60,
            "DicomModalities": modalities or {},
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                         "Servers": dicomweb_servers or {}},
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        with open(self.root / "orthanc.log", "ab") as log:
            self._proc = subprocess.Popen([ORTHANC_BIN, str(path)], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        raise TimeoutError(f"Orthanc did not answer:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "orthanc.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)

    # --- REST helpers -------------------------------------------------------------------
    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = httpx.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def upload(self, data: bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.rest("POST", "/instances", content=data)
        return result

    def study_instances(self, study_uid: str) -> list[bytes]:
        """Every instance Orthanc files under this StudyInstanceUID (any patient), as Part 10."""
        found = self.rest("POST", "/tools/find", json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
        return [httpx.get(f"{self.url}/instances/{i}/file", timeout=60).content for i in found]
