"""Bridge configuration: one settings object, read from the environment (prefix ``BRIDGE_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: Any) -> Any:
    """Let list settings be written as ``a,b,c`` in the environment instead of JSON."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class BridgeSettings(BaseSettings):
    """Every knob the bridge reads. Documented in bridge/README.md and .env.example (a test checks both)."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", env_file=".env", extra="ignore")

    storage_root: Path = Field(
        Path("var"), description="Keys file, job table, job files and link key; shared by API and workers."
    )
    host: str = Field("127.0.0.1", description="Address `python -m bridge serve` listens on.")
    port: int = Field(8808, ge=1, le=65535, description="Port `python -m bridge serve` listens on.")
    api_workers: int = Field(2, ge=1, description="gunicorn worker processes of `python -m bridge serve`.")
    api_threads: int = Field(8, ge=1, description="Threads per gunicorn worker (gthread).")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for the jti replay store, and the job queue unless broker_url is set.",
    )
    redis_timeout_s: float = Field(2.0, gt=0, description="Connect and command timeout for Redis calls.")

    jwt_audience: str = Field("talking-head-bridge", description="Required `aud` claim of every token.")
    jwt_issuer: str = Field("talking-head-dify-plugin", description="Required `iss` claim of every token.")
    jwt_max_lifetime_s: int = Field(300, ge=1, description="Largest accepted `exp - iat`; tokens are per call.")
    jwt_leeway_s: int = Field(30, ge=0, le=300, description="Clock skew tolerated on exp, nbf and iat.")

    keys_file: Path | None = Field(None, description="API keys (JSON, mode 0600). Default: <storage_root>/keys.json.")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Extra API keys from the environment, comma-separated `thk_<kid>_<secret>`; merged with the file.",
    )
    admin_kids: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Key ids (comma-separated) whose tokens carry the admin flag."
    )

    max_content_length: int = Field(
        200 * 1024 * 1024, ge=1024, description="Largest request body, upload or download in bytes (413 above)."
    )
    max_json_length: int = Field(
        64 * 1024, ge=1024,
        description="Largest JSON (any non-multipart) request body in bytes (413 above); text is at most 2,000 "
        "characters, files go as multipart.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Time a request body has to arrive in full (408 after); slow bodies hold API threads."
    )
    fetch_allow_http_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts (`host` or `host:port`, comma-separated) that `audio_url`, avatar `url` and "
        "`callback_url` may name over plain HTTP and on private addresses, e.g. an internal MinIO.",
    )
    fetch_timeout_s: float = Field(30.0, gt=0, description="Total time allowed for downloading a user URL.")
    callback_max_attempts: int = Field(6, ge=1, description="Deliveries of a callback before giving up.")
    callback_backoff_s: float = Field(
        5.0, gt=0, description="Wait before the second delivery; doubles each time, at most 10 minutes."
    )
    min_free_bytes: int = Field(1024**3, ge=0, description="/readyz fails when the storage root has less free space.")
    quota_active_jobs: int = Field(
        50, ge=0, description="Jobs one API key may have queued or running at once (429 above); 0: no limit."
    )
    quota_avatars: int = Field(100, ge=0, description="Avatars one API key may keep (429 above); 0: no limit.")
    quota_stored_bytes: int = Field(
        20 * 1024**3, ge=0,
        description="Bytes one API key may keep in storage: uploads and videos until retention deletes them, "
        "plus its avatars (429 above); 0: no limit.",
    )

    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the job table. Default: SQLite file <storage_root>/bridge.db (WAL)."
    )
    broker_url: str | None = Field(None, description="Celery broker (Redis). Default: redis_url.")
    queue: str = Field("render", min_length=1, description="Celery queue render jobs go to and workers consume.")
    job_time_limit_s: int = Field(900, ge=10, description="Hard per-job time limit; the soft limit comes earlier.")
    job_max_attempts: int = Field(3, ge=1, description="Deliveries before a job that keeps killing workers fails.")
    job_lease_s: float = Field(
        30.0, gt=0, description="A running job whose worker has not beaten for this long is given to another worker."
    )
    job_heartbeat_s: float = Field(5.0, gt=0, description="How often a worker renews the lease of the job it runs.")
    reaper_interval_s: float = Field(
        10.0, gt=0, description="How often each worker looks for jobs with expired leases or without a queue message."
    )
    link_secret: SecretStr | None = Field(
        None, description="HMAC key for download links. Default: 32 random bytes kept in <storage_root>/link.key."
    )
    link_ttl_s: int = Field(3600, ge=1, description="Lifetime of a download link minted by GET /v1/jobs/{id}.")
    public_base_url: str | None = Field(
        None, description="Scheme, host and port clients reach the bridge on. Default: http://{host}:{port}."
    )
    retention_s: int = Field(
        7 * 24 * 3600, ge=60, description="Finished jobs' files (and objects) are deleted this long after they end."
    )

    log_level: str = Field("INFO", description="Log level of the API and workers.")
    log_json: bool = Field(True, description="One JSON object per log line (false: plain text for a terminal).")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token Prometheus sends to GET /metrics. Unset: /metrics is off (404)."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port each worker serves its Prometheus metrics on; 0 is off."
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address the worker metrics are served on (0.0.0.0 in a container)."
    )
    worker_heartbeat_s: float = Field(10.0, gt=0, description="How often a worker writes its heartbeat to Redis.")

    link_backend: Literal["local", "minio"] = Field(
        "local", description="`local`: the bridge serves outputs under signed URLs; `minio`: presigned S3 links."
    )
    s3_endpoint: str | None = Field(None, description="`host:port` the bridge and workers reach S3 (MinIO) on.")
    s3_secure: bool = Field(True, description="HTTPS to s3_endpoint.")
    s3_public_endpoint: str | None = Field(
        None, description="`host:port` clients download from; links are signed for it. Default: s3_endpoint."
    )
    s3_public_secure: bool | None = Field(None, description="HTTPS for links. Default: s3_secure.")
    s3_region: str = Field("us-east-1", description="Region links are signed for (no lookup call is made).")
    s3_access_key: str | None = Field(None, description="S3 access key.")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret key.")
    s3_bucket: str = Field("talking-head", description="Private bucket for job outputs; created when missing.")

    @field_validator("api_keys", "admin_kids", "fetch_allow_http_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @model_validator(mode="after")
    def _default_keys_file(self) -> BridgeSettings:
        if self.keys_file is None:
            self.keys_file = self.storage_root / "keys.json"
        return self

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> BridgeSettings:
        if self.job_heartbeat_s * 2 > self.job_lease_s:
            raise ValueError("job_heartbeat_s must be at most half of job_lease_s, or live jobs look dead")
        return self

    @model_validator(mode="after")
    def _s3_complete(self) -> BridgeSettings:
        if self.link_backend == "minio" and not (self.s3_endpoint and self.s3_access_key and self.s3_secret_key):
            raise ValueError("link_backend minio needs BRIDGE_S3_ENDPOINT, BRIDGE_S3_ACCESS_KEY and "
                             "BRIDGE_S3_SECRET_KEY")
        return self

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.storage_root / 'bridge.db').resolve()}"

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def base_url(self) -> str:
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def job_soft_time_limit_s(self) -> int:
        """Leaves the task time to record a clean failure before the hard limit kills the process."""
        return max(self.job_time_limit_s - 60, int(self.job_time_limit_s * 0.9))

    @property
    def keys_path(self) -> Path:
        """The keys file, always set after validation (typed for callers)."""
        assert self.keys_file is not None
        return self.keys_file


@lru_cache(maxsize=1)
def get_settings() -> BridgeSettings:
    return BridgeSettings()
