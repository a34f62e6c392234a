"""All configuration, read once from the environment by one pydantic-settings class.

Nothing else in the code base reads `os.environ` for configuration: call `get_settings()`.
Defaults are the embedded deployment (`make run`): SQLite for data, kombu's SQLAlchemy
transport on SQLite as the broker, local disk for images.
"""

from __future__ import annotations

import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlparse

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev-secret-change-me"}
_PLACEHOLDER_WORDS = ("change", "example", "placeholder", "default", "secret-key")
_WEAK_SECRETS_ALLOWED = ("development", "test")
MIN_SECRET_KEY_LENGTH = 32
SECRET_KEY_FILE = "secret_key"


class DicomTenant(BaseModel):
    """One tenant's DICOM networking: its AE title, who may send, where results go back."""

    tenant: str
    ae_title: str = "NEUROSCAN"
    calling_aes: list[str] = []
    destination_url: str | None = None
    # Extra headers for the destination (e.g. {"Authorization": "Basic ..."}).
    destination_headers: dict[str, str] = {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # development or test: an explicit opt-in to weak secrets (SECRET_KEY); production:
    # https-only webhooks too. Unset or anything else: a weak SECRET_KEY is refused.
    environment: Literal["development", "test", "production"] | None = None

    # --- data and queue -------------------------------------------------------------
    # SQLite (embedded) or PostgreSQL; a plain `postgresql://...` URL as hosts give it works
    # as is (the driver is picked here), `sslmode=` included.
    database_url: str = "sqlite+aiosqlite:///./var/neuroscan.db"
    # Celery's broker: kombu's SQLAlchemy transport on SQLite (embedded) or `redis://...`.
    broker_url: str = "sqla+sqlite:///./var/broker.db"
    # Names this deployment's Celery queues and event channel: stacks that share one Redis
    # each need their own.
    queue_name: str = "neuroscan"
    # The queues (docs/operations.md, "Queues"): single scans go to QUEUE_INTERACTIVE, batches
    # to QUEUE_BULK, webhook sends to QUEUE_WEBHOOKS. Model workers take interactive work
    # first; webhooks go to a light worker without the model. Empty: QUEUE_NAME + ".interactive",
    # ".bulk", ".webhooks".
    queue_interactive: str = ""
    queue_bulk: str = ""
    queue_webhooks: str = ""
    # How long an Idempotency-Key is remembered: a retry within this time gets the first
    # answer (same ids), never a second scan.
    idempotency_key_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Where the embedded deployment keeps its database, broker and state.
    var_dir: Path = Path("./var")

    # --- database connections (one API process on two cores) --------------------------
    # A request holds at most one pooled connection, for milliseconds at a time, so a small
    # pool serves many clients; when it is exhausted a request waits at most
    # `db_pool_timeout_s` and is then answered 503 with Retry-After (never 500, never 30 s).
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout_s: float = Field(default=5.0, gt=0)
    # SQLite has one writer: the API queues its writes in process (at most `sqlite_write_queue`
    # waiting, each for at most `sqlite_write_wait_s`, which also bounds waiting for a worker's
    # lock) and answers 503 beyond that, instead of piling up behind lock timeouts.
    sqlite_write_queue: int = Field(default=64, ge=1)
    sqlite_write_wait_s: float = Field(default=5.0, gt=0)
    # Seconds a client is told to wait (Retry-After) when the service is saturated.
    overload_retry_after_s: int = Field(default=2, ge=1)
    # The whole request body, chunked or not (a batch is many files; one scan is capped at
    # `max_upload_bytes` plus multipart framing).
    max_request_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    # Pixels (width x height, read from the header before anything is decoded) an upload may
    # have; the default allows every image `max_image_side` allows.
    max_image_pixels: int = Field(default=8192 * 8192, ge=64 * 64)
    # The worker decodes an image at most this many pixels on its longer side, shrinking it
    # while decoding (JPEG at 1/2..1/8 scale, PNG and DICOM in their 8/16-bit form): the model
    # reads 128 px and the overlay 1024. Heatmap, overlay and preview are drawn in that frame.
    # 0 decodes at full size (the old unbounded path, kept for comparison).
    decode_max_side: int = Field(default=1024, ge=0)
    # Decoded pixels (native 8/16-bit, before shrinking) that decodes in one process may hold
    # at once; a larger image waits until it can decode alone.
    decode_memory_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)

    # --- storage ----------------------------------------------------------------------
    # Cloudinary credentials, as one URL (cloudinary://KEY:SECRET@CLOUD) or three names;
    # unset: local disk under MEDIA_DIR. Images are `authenticated` assets reached through
    # signed, expiring links.
    cloudinary_url: str | None = None
    cloudinary_cloud_name: str | None = None
    cloudinary_api_key: str | None = None
    cloudinary_api_secret: str | None = None
    # Where the SDK sends API calls; tests point it at a local stand-in server.
    cloudinary_upload_prefix: str | None = None
    # One Cloudinary request may take this long; an upload that fails or times out is tried
    # again (same public_id, overwrite: idempotent) up to STORAGE_MAX_ATTEMPTS times in all,
    # 0.5, 1, 2... s apart, before the task's own retry (README, "Guarantees").
    storage_timeout_s: float = Field(default=60.0, gt=0.0)
    storage_max_attempts: int = Field(default=4, ge=1, le=10)
    media_dir: Path = Path("./var/media")  # local image storage (one host only)
    signed_url_ttl_s: int = Field(default=3600, ge=60)  # lifetime of image links, seconds
    # How many hosts run the API or workers against this database and broker. Above 1, images
    # must live where every host reaches them: Cloudinary, or a MEDIA_DIR that every host
    # mounts (MEDIA_DIR_SHARED=true). API and worker refuse to start otherwise, because a
    # result written to one host's disk is a broken link on all the others.
    deployment_hosts: int = Field(default=1, ge=1)
    media_dir_shared: bool = False  # MEDIA_DIR is a network filesystem mounted on every host
    # Signs local media links, pseudonyms and other tokens: at least 32 characters (openssl
    # rand -hex 32). Unset: read from VAR_DIR/secret_key, which the embedded (SQLite)
    # deployment writes with a random one on first start. Short or placeholder values are
    # refused unless ENVIRONMENT is development or test.
    secret_key: str = ""

    # --- HTTP ---------------------------------------------------------------------------
    port: int = 8000  # the API's port (the API image sets 7860, as the original product did)
    host: str = "127.0.0.1"  # the API's bind address
    # Seconds the API keeps an idle connection open. Longer than clients keep theirs (httpx 5 s,
    # most load balancers 60 s or less), so a client never reuses a connection at the moment
    # the server closes it (a reset instead of an answer; uvicorn's own default is 5 s).
    http_keep_alive_s: int = Field(default=75, ge=1)
    # The address clients reach the API at, for absolute links (webhooks, FHIR); unset: the
    # request's own.
    public_base_url: str | None = None
    cors_origins: list[str] = []  # origins a browser page may call the API from (JSON list)
    # Reverse proxies whose X-Forwarded-For/-Proto headers are believed (addresses or
    # networks, comma-separated; "*" any): passed to uvicorn. Empty: none, the peer is the
    # client.
    trusted_proxies: Annotated[list[str], NoDecode] = []

    # --- API keys and rate limits (docs/operations.md, "Keys and secrets") -----------------
    # A new key's lifetime in days unless `keys create --expires-in` says otherwise; 0: keys
    # do not expire.
    api_key_lifetime_days: int = Field(default=365, ge=0)
    # Requests per minute per API key (a moving window), uploads (POST, PUT, PATCH, DELETE)
    # and reads (GET, HEAD) counted apart; beyond: 429 + Retry-After. 0: no limit.
    rate_limit_uploads_per_min: int = Field(default=3000, ge=0)
    rate_limit_reads_per_min: int = Field(default=30000, ge=0)
    sse_streams_per_key: int = Field(default=32, ge=0)  # open event streams per key; 0: no cap
    # Where the counters live: memory:// (one API process) or redis://...; unset: the broker's
    # Redis when BROKER_URL is redis://, else memory.
    rate_limit_storage_url: str | None = None

    # --- upload checks ------------------------------------------------------------------
    max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)  # one file
    max_batch_files: int = Field(default=1000, ge=1)  # files in one batch request
    # A ZIP batch: the most bytes its members may expand to, all together (zip bombs).
    max_archive_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)

    # An image's smallest and largest side in pixels, and its widest aspect ratio (MRI slices
    # are close to square; the intake refuses wider ones at the door and the worker's gate
    # uses the same limit, so nothing accepted fails on it later).
    min_image_side: int = Field(default=64, ge=8)
    max_image_side: int = Field(default=8192, ge=64)
    max_aspect_ratio: float = Field(default=2.0, ge=1.0)

    # --- DICOM and de-identification ----------------------------------------------------
    allowed_modalities: list[str] = ["MR"]  # DICOM Modality values accepted
    # Accept DICOM whose BurnedInAnnotation is YES (text in the pixels is not removed).
    allow_burned_in_annotation: bool = False

    # --- DICOM networking and results back into the PACS (docs/hospital.md) -------------
    # Per tenant: the AE title the C-STORE receiver answers as, the calling AE titles it
    # accepts, and where series results go back (a DICOMweb base URL; STOW-RS to /studies).
    # JSON, e.g. [{"tenant": "St Mary's", "ae_title": "NEUROSCAN", "calling_aes": ["PACS"],
    #   "destination_url": "https://pacs.example.org/dicom-web"}]
    dicom_tenants: list[DicomTenant] = []
    dicom_port: int = 11112
    dicom_host: str = "127.0.0.1"
    # A series is complete this long after its last instance arrived (or at POST
    # /v1/series/{id}/complete); its finding is computed once its slices are final.
    dicom_series_settle_s: float = Field(default=30.0, ge=0.0)
    # Encrypts the re-identification records (the original study/series/instance UIDs, kept
    # only to file results under the original study); per-tenant keys are derived from it.
    # Unset: derived from SECRET_KEY. Records are deleted this long after the series arrived.
    dicom_reid_key: str | None = None
    dicom_reid_retention_s: int = Field(default=7 * 24 * 3600, ge=60)

    # --- model and worker ---------------------------------------------------------------
    # The worker loads MODEL_DIR/MODEL_NAME.weights.h5 and checks it against its card.
    model_dir: Path = Path("./models")
    model_name: str = "neuroscan-cnn"
    worker_batch_size: int = Field(default=16, ge=1, le=256)  # scans per task message
    # Messages a worker reserves ahead; 1 keeps waiting work on the queue for other workers.
    worker_prefetch_multiplier: int = Field(default=1, ge=1)
    worker_concurrency: int = Field(default=1, ge=1)  # tasks one worker process runs at once
    # Dynamic batching: a task's own scans plus queued scans other tasks were sent for, up to
    # this many in one model pass (their own messages then find them leased or final), after
    # waiting at most WORKER_BATCH_WAIT_MS for more when the batch is not full (0: take what
    # is queued and never wait). docs/performance.md.
    worker_max_batch: int = Field(default=32, ge=1, le=256)
    worker_batch_wait_ms: float = Field(default=0.0, ge=0.0, le=1000.0)
    # Threads for the per-image CPU work around the model pass (decode, gate, preprocess,
    # rendering), for uploads, and TensorFlow's own pools (0: one per core). The defaults suit
    # a worker alone on two cores; lower them where it shares the machine.
    worker_threads: int = Field(default=2, ge=1, le=64)
    worker_io_threads: int = Field(default=8, ge=1, le=64)
    tf_intra_op_threads: int = Field(default=0, ge=0)
    tf_inter_op_threads: int = Field(default=1, ge=0)
    # How often a worker polls the embedded (SQLite) broker for a new task; kombu's default
    # is 1 s, which was most of a single scan's latency. Ignored by Redis (it pushes).
    broker_polling_interval_s: float = Field(default=0.05, gt=0.0, le=5.0)
    task_max_retries: int = Field(default=5, ge=0)  # transient failures retried, with backoff
    # Reliability: the database is the source of truth, the queue only a trigger (README,
    # "Guarantees"). The order that makes it work, checked below:
    #   heartbeat (lease/3) < SCAN_LEASE_S < RECONCILE_AGE_S
    #   TASK_TIME_LIMIT_S + SCAN_LEASE_S + RECONCILE_AGE_S < BROKER_VISIBILITY_TIMEOUT_S
    # A worker holds the scans it claimed with a lease that its heartbeat renews; a dead
    # worker's lease runs out within SCAN_LEASE_S and the next reconciler pass takes them back.
    scan_lease_s: float = Field(default=30.0, ge=1.0)
    # The longest one task may hold its scans: the heartbeat stops renewing after this, so a
    # hung task loses them too (Celery's own time limits do not apply to the solo pool).
    task_time_limit_s: float = Field(default=600.0, ge=1.0)
    # Every worker runs a reconciler this often; it re-sends queued scans whose message may
    # be lost (queued, or last sent, longer than RECONCILE_AGE_S ago) and expired leases.
    reconcile_interval_s: float = Field(default=15.0, ge=0.5)
    reconcile_age_s: float = Field(default=60.0, ge=1.0)
    # A scan whose worker was lost this many times (an input that crashes a decoder, say)
    # ends failed with `poison_input` instead of killing workers for ever.
    scan_max_lost_leases: int = Field(default=3, ge=1)
    # With the Redis broker an unacknowledged (acks_late) task is redelivered after this.
    broker_visibility_timeout_s: int = Field(default=3600, ge=60)

    # --- webhooks -----------------------------------------------------------------------
    webhook_secret: str | None = None  # signs webhook bodies; unset: derived from SECRET_KEY
    # Allow callback URLs on private/loopback addresses (off: no SSRF into the hospital).
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 10.0  # one delivery attempt
    webhook_max_attempts: int = Field(default=6, ge=1)  # then the delivery is marked failed
    # The outbox (README, "Guarantees"): a delivery still pending this long after it was due
    # (its task was lost: the broker was down) is sent again by the reconciler; one claimed
    # by a worker that never reported back within WEBHOOK_TIMEOUT_S + this counts as a try
    # and the next is planned. Tries are 2^(n-1) s apart (with jitter), at most the maximum.
    webhook_resend_age_s: float = Field(default=60.0, ge=1.0)
    webhook_backoff_max_s: float = Field(default=600.0, ge=1.0)

    # --- data lifecycle (docs/operations.md, "Data we keep") -------------------------------
    # Days each kind of data is kept after its scan finished, unless the tenant has its own
    # (tenant_retention); 0 keeps it until deleted on request. Originals: the uploaded file;
    # derived: heatmap, overlay, preview; results: the scan row (and everything of the scan);
    # events: its state-change rows.
    retention_originals_days: int = Field(default=30, ge=0)
    retention_derived_days: int = Field(default=90, ge=0)
    retention_results_days: int = Field(default=365, ge=0)
    retention_events_days: int = Field(default=30, ge=0)
    # The purge rides the reconciler thread: at most this often, this many scans per kind.
    purge_interval_s: float = Field(default=3600.0, ge=1.0)
    purge_batch_size: int = Field(default=500, ge=1, le=10_000)

    # --- operations ---------------------------------------------------------------------
    # Flower's basic auth and port (`make flower`, the compose `flower` service).
    flower_user: str = "admin"
    flower_password: str = "change-me"
    flower_port: int = 5555
    log_level: str = "INFO"  # Python logging level of API and worker
    # Log lines as JSON objects (one per line, with request id, scan and batch ids) or plain
    # text; unset: JSON when ENVIRONMENT is test or production (docs/operations.md, Logs).
    log_format: Literal["json", "text"] | None = None
    # Each worker serves Prometheus /metrics on this address and port (0: off); workers that
    # share a network namespace need a port each (docs/operations.md, Monitoring).
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_weak_secret_key(self) -> Settings:
        """Outside an explicit ENVIRONMENT=development/test, a weak SECRET_KEY stops the
        process at start: whoever forgets ENVIRONMENT gets the strict rule, not the lax one."""
        if not self.secret_key:
            self.secret_key = stored_secret_key(self)
        problem = secret_key_problem(self.secret_key)
        if problem and self.environment not in _WEAK_SECRETS_ALLOWED:
            raise ValueError(
                f"refusing to start: SECRET_KEY {problem}. Set it to a random value of at least "
                f"{MIN_SECRET_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`), or unset it "
                "in the embedded deployment to have one generated; weak secrets are accepted "
                "only with ENVIRONMENT=development or test")
        return self

    @model_validator(mode="after")
    def _name_queues(self) -> Settings:
        self.queue_interactive = self.queue_interactive or f"{self.queue_name}.interactive"
        self.queue_bulk = self.queue_bulk or f"{self.queue_name}.bulk"
        self.queue_webhooks = self.queue_webhooks or f"{self.queue_name}.webhooks"
        return self

    @model_validator(mode="after")
    def _check_timeout_order(self) -> Settings:
        if not self.scan_lease_s < self.reconcile_age_s:
            raise ValueError("SCAN_LEASE_S must be below RECONCILE_AGE_S")
        if not self.reconcile_interval_s <= self.reconcile_age_s:
            raise ValueError("RECONCILE_INTERVAL_S must not exceed RECONCILE_AGE_S")
        if not (self.task_time_limit_s + self.scan_lease_s + self.reconcile_age_s
                < self.broker_visibility_timeout_s):
            raise ValueError("BROKER_VISIBILITY_TIMEOUT_S must exceed TASK_TIME_LIMIT_S + "
                             "SCAN_LEASE_S + RECONCILE_AGE_S (Redis must never redeliver a live task)")
        return self

    # --- derived values -----------------------------------------------------------------
    @property
    def async_database_url(self) -> str:
        """The URL for SQLAlchemy's asyncio engine (asyncpg or aiosqlite)."""
        return _with_driver(self.database_url, asyncio=True)

    @property
    def sync_database_url(self) -> str:
        """The URL for a synchronous engine (psycopg or sqlite3): worker, Alembic, CLI."""
        return _with_driver(self.database_url, asyncio=False)

    @property
    def log_json(self) -> bool:
        """LOG_FORMAT, or its default: JSON in test and production, text otherwise."""
        return (self.log_format or ("json" if self.environment in ("test", "production")
                                    else "text")) == "json"

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def cloudinary(self) -> dict[str, str] | None:
        """Cloud name, key and secret, from CLOUDINARY_URL or the three names; None = local disk."""
        if self.cloudinary_url:
            parsed = urlparse(self.cloudinary_url)
            if parsed.scheme != "cloudinary" or not (parsed.hostname and parsed.username and parsed.password):
                raise ValueError("CLOUDINARY_URL must look like cloudinary://KEY:SECRET@CLOUD_NAME")
            extra = {k: v[0] for k, v in parse_qs(parsed.query).items()}
            return {"cloud_name": parsed.hostname, "api_key": parsed.username,
                    "api_secret": parsed.password, **extra}
        names = (self.cloudinary_cloud_name, self.cloudinary_api_key, self.cloudinary_api_secret)
        if all(names):
            return {"cloud_name": names[0], "api_key": names[1], "api_secret": names[2]}  # type: ignore[dict-item]
        if any(names):
            raise ValueError("set all three of CLOUDINARY_CLOUD_NAME, CLOUDINARY_API_KEY, CLOUDINARY_API_SECRET")
        return None


def secret_key_problem(value: str) -> str | None:
    """Why this SECRET_KEY is weak, or None."""
    if value.strip().lower() in _PLACEHOLDER_SECRETS or any(
            word in value.lower() for word in _PLACEHOLDER_WORDS):
        return "is a placeholder"
    if len(value) < MIN_SECRET_KEY_LENGTH:
        return f"is shorter than {MIN_SECRET_KEY_LENGTH} characters"
    if len(set(value)) < 8:
        return "repeats too few characters to be random"
    return None


def stored_secret_key(settings: Settings) -> str:
    """The secret in VAR_DIR/secret_key; written (random, mode 0600) when the deployment is the
    embedded one, whose processes all share VAR_DIR. Elsewhere a missing one is refused: API
    and workers on other hosts would each make their own."""
    path = settings.var_dir / SECRET_KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    if not (settings.uses_sqlite or settings.environment in _WEAK_SECRETS_ALLOWED):
        raise ValueError("refusing to start: SECRET_KEY is not set. Set it to a random value "
                         f"of at least {MIN_SECRET_KEY_LENGTH} characters (e.g. `openssl rand "
                         "-hex 32`), the same on every host")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and linked into place: of two processes starting together, one wins and
    # both read the winner's secret, never a half-written file.
    tmp = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def _with_driver(url: str, *, asyncio: bool) -> str:
    """Accept plain `postgresql://` URLs (as Supabase and most hosts give them) and pick our driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"DATABASE_URL is not a URL: {url!r}")
    base = scheme.split("+", 1)[0]
    if base in ("postgres", "postgresql"):
        return f"postgresql+{'asyncpg' if asyncio else 'psycopg'}://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}" if asyncio else f"sqlite://{rest}"
    raise ValueError(f"unsupported database scheme {scheme!r}; use postgresql:// or sqlite://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
