"""The pipeline's plain functions in this process, with real tiny weights, SQLite and disk:
retry semantics, permanent failures, giving up, batch completion, leases and the reconciler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api.intake import AcceptedUpload, add_scan, new_batch
from shared.db.migrate import upgrade_to_head
from shared.db.models import Batch, Scan, ScanEvent
from shared.db.session import sync_session
from shared.settings import get_settings
from shared.storage import LocalStorage, StorageError, get_storage
from tests.support.images import brain_png, colour_photo_png
from tests.support.inprocess import settings_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("pipeline")
    with settings_env(database_url=f"sqlite:///{root / 'db.sqlite'}",
                      broker_url=f"sqla+sqlite:///{root / 'broker.db'}",
                      media_dir=str(root / "media"), model_dir=str(tiny_model_dir),
                      model_name="neuroscan-tiny"):
        upgrade_to_head()
        from shared.db.tenants import issue_key

        with sync_session() as session:
            issue_key(session, "pipeline-tests")
        yield root


@pytest.fixture()
def tenant_id(env: Path) -> str:
    from shared.db.models import Tenant

    with sync_session() as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == "pipeline-tests"))


def _queue(tenant_id: str, *payloads: bytes, batch: bool = False,
           callback: str | None = None) -> tuple[list[str], str | None]:
    with sync_session() as session:
        batch_row = new_batch(session, tenant_id, callback) if batch else None
        ids = [add_scan(session, tenant_id, AcceptedUpload(data, "png", f"{i}.png", None),
                        batch_id=batch_row.id if batch_row else None).id
               for i, data in enumerate(payloads)]
        if batch_row:
            batch_row.total = len(ids)
    return ids, batch_row.id if batch_row else None


def _scan(scan_id: str) -> Scan:
    with sync_session() as session:
        return session.get(Scan, scan_id)


def _states(scan_id: str) -> list[str]:
    with sync_session() as session:
        return list(session.scalars(select(ScanEvent.state).where(ScanEvent.scan_id == scan_id)
                                    .order_by(ScanEvent.id)))


class _BrokenStorage(LocalStorage):
    def put(self, *args: object, **kwargs: object) -> str:
        raise StorageError("disk on fire")


def test_transient_storage_error_propagates_and_a_retry_finishes(env: Path, tenant_id: str) -> None:
    from worker import pipeline

    (scan_id,), _ = _queue(tenant_id, brain_png(1))
    broken = _BrokenStorage(env / "media", secret_key="x")
    with pytest.raises(StorageError):
        pipeline.process_scans([scan_id], storage=broken)
    row = _scan(scan_id)
    assert (row.state, row.attempts) == ("processing", 1)  # left for the retry, not failed
    done = pipeline.process_scans([scan_id])
    row = _scan(scan_id)
    assert done == [scan_id] and (row.state, row.attempts) == ("succeeded", 2)
    assert _states(scan_id) == ["queued", "processing", "succeeded"]
    assert get_storage().get(row.heatmap_ref).startswith(b"\x89PNG")
    # Once final, another delivery is a no-op.
    assert pipeline.process_scans([scan_id]) == []
    assert _scan(scan_id).attempts == 2


def test_permanent_failures_are_final_without_retry(env: Path, tenant_id: str) -> None:
    from worker import pipeline

    (garbage, photo), _ = _queue(tenant_id, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, colour_photo_png())
    assert sorted(pipeline.process_scans([garbage, photo])) == sorted([garbage, photo])
    assert (_scan(garbage).state, _scan(garbage).error_code) == ("failed", "undecodable_image")
    assert (_scan(photo).state, _scan(photo).error_code) == ("failed", "not_brain_mri")
    assert _scan(photo).image_ref is not None  # the rejected original is kept for review


def test_giving_up_marks_unfinished_scans_failed(env: Path, tenant_id: str) -> None:
    from worker import pipeline

    (done_id, stuck_id), _ = _queue(tenant_id, brain_png(2), brain_png(3))
    pipeline.process_scans([done_id])
    failed = pipeline.fail_unfinished([done_id, stuck_id], "processing_error", "gave up")
    assert failed == [stuck_id]
    assert _scan(done_id).state == "succeeded"
    stuck = _scan(stuck_id)
    assert (stuck.state, stuck.error_code, stuck.error_message) == (
        "failed", "processing_error", "gave up")
    assert _states(stuck_id) == ["queued", "failed"]


def test_batch_completion_is_announced_once(env: Path, tenant_id: str) -> None:
    from worker import pipeline

    calls: list[tuple[str, str]] = []
    (a, b), batch_id = _queue(tenant_id, brain_png(4), brain_png(5), batch=True,
                              callback="https://ris.example.org/hook")
    pipeline.process_scans([a], notify=lambda *call: calls.append(call))
    assert calls == []  # one scan of two: not done yet
    pipeline.process_scans([b], notify=lambda *call: calls.append(call))
    assert calls == [(batch_id, "batch")]
    pipeline.fail_unfinished([a, b], "x", "y", notify=lambda *call: calls.append(call))
    assert calls == [(batch_id, "batch")]
    with sync_session() as session:
        assert session.get(Batch, batch_id).finished_at is not None


def test_single_scan_with_callback_is_announced(env: Path, tenant_id: str) -> None:
    from api.intake import AcceptedUpload as Upload
    from worker import pipeline

    with sync_session() as session:
        scan_id = add_scan(session, tenant_id, Upload(brain_png(6), "png", "c.png", None),
                           callback_url="https://ris.example.org/hook").id
    calls: list[tuple[str, str]] = []
    pipeline.process_scans([scan_id], notify=lambda *call: calls.append(call))
    assert calls == [(scan_id, "scan")]


class _Sent(list[tuple[list[str], int]]):
    """The reconciler's `send`, recording (scan ids, batch size); the live-stack fault tests
    (tests/integration/test_faults.py) run it against a real broker."""

    def __call__(self, ids: list[str], size: int) -> None:
        self.append((list(ids), size))


def test_reconciler_resends_long_queued_scans_once_per_period(env: Path, tenant_id: str) -> None:
    from worker.reconciler import reconcile_once

    (a, b), _ = _queue(tenant_id, brain_png(7), brain_png(8))
    sent = _Sent()
    report = reconcile_once(sent, age_s=0)
    assert {a, b} <= set(report.resent) and report.poisoned == report.retried_alone == []
    assert all(size == get_settings().worker_batch_size for _, size in sent)
    again = _Sent()
    assert not {a, b} & set(reconcile_once(again).resent)  # sent moments ago: not again yet
    assert _scan(a).enqueued_at is not None and _scan(a).state == "queued"


def test_claim_skips_scans_another_live_worker_holds(env: Path, tenant_id: str) -> None:
    from worker import pipeline

    (scan_id,), _ = _queue(tenant_id, brain_png(9))
    with sync_session() as session:
        assert [c.scan_id for c in pipeline.claim(session, [scan_id], "worker-a", 30)] == [scan_id]
    with sync_session() as session:
        assert pipeline.claim(session, [scan_id], "worker-b", 30) == []
    assert pipeline.process_scans([scan_id], owner="worker-b") == []
    # The same task again (a Celery retry keeps its id) may take it.
    assert pipeline.process_scans([scan_id], owner="worker-a") == [scan_id]
    row = _scan(scan_id)
    assert (row.state, row.lease_owner, row.lease_expires_at) == ("succeeded", None, None)


def test_expired_leases_run_alone_and_a_poison_input_fails_alone(env: Path,
                                                                   tenant_id: str) -> None:
    from datetime import timedelta

    from shared.db.models import utcnow
    from worker import pipeline
    from worker.reconciler import reconcile_once

    limit = get_settings().scan_max_lost_leases
    (good, poison, other), _ = _queue(tenant_id, brain_png(10), brain_png(11), brain_png(12))
    with sync_session() as session:  # a worker claims the three, then dies
        pipeline.claim(session, [good, poison, other], "dead-1", 5)
    later = utcnow() + timedelta(seconds=10)
    sent = _Sent()
    report = reconcile_once(sent, now=later, age_s=3600)
    assert sorted(report.retried_alone) == sorted([good, poison, other])
    assert [(sorted(ids), size) for ids, size in sent] == [(sorted([good, poison, other]), 1)]
    assert pipeline.process_scans([good]) == [good]  # run alone: fine
    assert pipeline.process_scans([other]) == [other]
    for n in range(2, limit + 1):  # the poison input kills every worker that takes it
        with sync_session() as session:
            assert [c.scan_id for c in pipeline.claim(session, [poison], f"dead-{n}", 5)] == [poison]
        later += timedelta(seconds=10)
        report = reconcile_once(_Sent(), now=later, age_s=3600)
        assert report.poisoned == ([poison] if n == limit else [])
    row = _scan(poison)
    assert (row.state, row.error_code, row.lost_leases) == ("failed", "poison_input", limit)
    assert (row.attempts, row.lease_expires_at) == (limit, None)
    assert _scan(good).state == _scan(other).state == "succeeded"
    assert _states(poison) == ["queued", "processing", "failed"]


def test_heartbeat_renews_and_release_gives_up_the_lease(env: Path, tenant_id: str) -> None:
    import time

    from worker import pipeline
    from worker.leases import Heartbeat, release

    (scan_id,), _ = _queue(tenant_id, brain_png(13))
    with sync_session() as session:
        pipeline.claim(session, [scan_id], "beating", 0.6)
    first = _scan(scan_id).lease_expires_at
    with Heartbeat([scan_id], "beating", 0.6, limit_s=60):
        time.sleep(0.9)
    assert _scan(scan_id).lease_expires_at > first
    release([scan_id], "other-owner")  # not its lease: nothing changes
    assert _scan(scan_id).lease_owner == "beating"
    release([scan_id], "beating")
    row = _scan(scan_id)
    assert (row.state, row.lease_owner, row.lease_expires_at) == ("processing", None, None)
    assert pipeline.process_scans([scan_id]) == [scan_id]


def test_task_and_app_configuration(env: Path) -> None:
    from sqlalchemy.exc import OperationalError

    from worker import tasks
    from worker.celery_app import app

    task = app.tasks["neuroscan.process_scans"]
    assert StorageError in task.autoretry_for and OperationalError in task.autoretry_for
    assert task.max_retries == get_settings().task_max_retries and task.retry_backoff
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.worker_prefetch_multiplier == get_settings().worker_prefetch_multiplier
    assert conf.task_serializer == "json" and conf.task_ignore_result
    assert tasks.process_scans.name == "neuroscan.process_scans"


def test_dynamic_batching_gathers_queued_scans_and_gives_them_back_on_failure(
        env: Path, tenant_id: str) -> None:
    from worker import pipeline

    with sync_session() as session:  # earlier tests' leftovers must not join these batches
        for row in session.scalars(select(Scan).where(Scan.state == "queued")):
            pipeline.fail_row(session, row, "test_cleanup", "left over by an earlier test")
    own, _ = _queue(tenant_id, brain_png(60))
    others = [_queue(tenant_id, brain_png(61 + i))[0][0] for i in range(3)]  # oldest first
    lost, _ = _queue(tenant_id, brain_png(64))
    with sync_session() as session:  # a scan once lost by a worker runs alone: never gathered
        session.get(Scan, lost[0]).lost_leases = 1
    resent: list[list[str]] = []
    broken = _BrokenStorage(env / "media", secret_key="x")
    with pytest.raises(StorageError):
        pipeline.process_scans(own, storage=broken, gather=3, resend=resent.append)
    assert [sorted(ids) for ids in resent] == [sorted(others[:2])]  # given back, each alone
    for scan_id in own + others[:2]:
        row = _scan(scan_id)
        assert (row.state, row.lease_owner, row.attempts) == ("processing", None, 1)
    assert _scan(others[2]).attempts == 0

    # Scans given back by a failed pass run alone (their re-sent tasks), never gathered again.
    done = pipeline.process_scans(own, gather=3)
    assert sorted(done) == sorted(own + others[2:])
    assert pipeline.process_scans(others[2:], gather=3) == []  # its own message: a no-op
    for scan_id in others[:2]:
        assert pipeline.process_scans([scan_id], gather=8) == [scan_id]
    assert _scan(lost[0]).state == "queued"  # lost once: never gathered
    for scan_id in own + others:
        assert _states(scan_id)[-1] == "succeeded"
