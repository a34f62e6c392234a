"""The Compose file and both Dockerfiles say what the deployment promises (no Docker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def _requirements(name: str) -> list[str]:
    """Package names in a requirements file, following `-r` includes."""
    names = []
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names += _requirements(line[3:].strip())
        elif line:
            names.append(re.split(r"[\[=<>~! ]", line, maxsplit=1)[0].lower())
    return names


def test_compose_names_every_service_with_health_checks(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker", "flower"} <= set(services)
    for name in ("postgres", "redis", "api", "worker", "flower"):
        assert services[name].get("healthcheck", {}).get("test"), name


def test_compose_persists_data_and_redis_uses_aof(compose: dict) -> None:
    services, volumes = compose["services"], compose["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command
    for service in services.values():
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in volumes  # named volumes, declared


def test_workers_scale_and_wait_for_their_dependencies(compose: dict) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert worker["build"]["dockerfile"] == "Dockerfile.worker"
    assert worker["environment"]["BROKER_URL"].startswith("redis://")
    assert worker["environment"]["DATABASE_URL"].startswith("postgresql://")
    api = compose["services"]["api"]
    assert api["build"]["dockerfile"] == "Dockerfile.api"
    assert api["environment"]["PORT"] == "7860" and any(
        str(p).endswith(":7860") for p in api["ports"])
    for name in ("api", "worker"):
        deps = compose["services"][name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["neuroscan", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_flower_has_basic_auth_from_the_environment(compose: dict) -> None:
    command = " ".join(compose["services"]["flower"]["command"])
    assert "flower" in command and "--basic-auth=${FLOWER_USER" in command
    assert "${FLOWER_PASSWORD" in command and "redis://redis:6379" in command


def test_api_image_has_no_tensorflow_runs_as_a_user_on_7860() -> None:
    steps = _dockerfile("Dockerfile.api")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "requirements/api.txt" in runs and "worker.txt" not in runs and "dev.txt" not in runs
    assert not {"tensorflow", "tensorflow-cpu", "keras"} & set(_requirements("api.txt"))
    copied = [args.split()[0] for op, args in steps if op == "COPY"]
    assert "worker" not in copied and "research" not in copied
    assert any(op == "ENV" and "PORT=7860" in args for op, args in steps)
    assert ("EXPOSE", "7860") in steps
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "HEALTHCHECK" for op, _ in steps)


def test_worker_image_has_the_model_stack_and_runs_as_a_user() -> None:
    steps = _dockerfile("Dockerfile.worker")
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert "requirements/worker.txt" in runs
    assert "tensorflow-cpu" in _requirements("worker.txt")
    copied = [args.split()[0] for op, args in steps if op == "COPY"]
    assert {"worker", "shared", "models"} <= set(copied)
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = next(args for op, args in steps if op == "CMD")
    assert "worker" in cmd


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var", ".env"} <= set(ignored)


def test_settings_reach_the_containers_and_flower_stays_on_loopback(compose: dict) -> None:
    services = compose["services"]
    for name in ("migrate", "api", "worker"):
        assert services[name]["env_file"], name  # every .env setting, not a chosen few
    assert all(str(p).startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert "flower==2.2.0" in (ROOT / "requirements" / "api.txt").read_text()
    # Longer than a batch: SIGTERM lets the batch in hand finish before SIGKILL.
    assert services["worker"]["stop_grace_period"] in ("2m", "120s")


def test_images_carry_what_their_commands_need() -> None:
    api_steps, worker_steps = _dockerfile("Dockerfile.api"), _dockerfile("Dockerfile.worker")
    # The API's PDFs cite the model card; weights stay out of the API image.
    assert ("COPY", "models/*.card.json models/") in api_steps
    # `neuroscan migrate` finds alembic.ini and migrations/ beside the code: installed in place.
    for steps in (api_steps, worker_steps):
        copies = [args.split() for op, args in steps if op == "COPY"]
        assert any("alembic.ini" in c for c in copies) and any("migrations" in c for c in copies)
        assert any("pip install --no-deps -e ." in args for op, args in steps if op == "RUN")
