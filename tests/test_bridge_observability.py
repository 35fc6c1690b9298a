"""Observability building blocks: JSON logs with context, secret redaction, request ids, metrics, heartbeats.

Logs are captured on a StringIO through the same handler ``configure_logging`` installs. Heartbeats and the
queue-depth reader run against a real redis-server on a free loopback port.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from flask import Flask, g
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.logs import (
    RedactingFilter,
    configure_logging,
    get_request_id,
    init_request_logging,
    log_context,
    make_handler,
)
from bridge.metrics import (
    HEARTBEAT_KEY_PREFIX,
    KOMBU_PRIORITY_SEP,
    BridgeCollector,
    Heartbeat,
    WorkerMetrics,
    beat,
    make_registry,
    metrics_response,
    read_heartbeats,
    redis_queue_depth,
    stage_timer,
    start_worker_metrics_server,
)
from tests.bridge_fixtures import RedisServer, free_port

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6InRoK2p3dCIsImtpZCI6ImFiYzEyMyJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz"
KEY_SECRET = "Zm9vYmFyYmF6cXV4X3NlY3JldF9ieXRlc18zMl9sb25n"
API_KEY = f"thk_abc123_{KEY_SECRET}"
LINK_SIG = "9f2c1e7ab44d0c3e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e"
LINK = f"https://bridge.example/files/0123abcd/video.mp4?exp=1900000000&sig={LINK_SIG}"
AMZ_SIG = "b2754f5b1ad9aa0b9e1f6b4f0a6c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c"
AMZ_CRED = "AKIAIOSFODNN7EXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
PRESIGNED = (f"https://bucket.s3.amazonaws.com/jobs/0123abcd/video.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential={AMZ_CRED}&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600"
             f"&X-Amz-SignedHeaders=host&X-Amz-Signature={AMZ_SIG}")
SECRETS = (JWT, "eyJhbGciOiJIUzI1NiIs", KEY_SECRET, LINK_SIG, AMZ_SIG, "AKIAIOSFODNN7EXAMPLE", "X-Amz-Date=")


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose only handler is the bridge's JSON handler on a StringIO."""
    buffer = io.StringIO()
    logger = logging.getLogger(f"test.observability.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(make_handler(buffer))
    yield logger, buffer
    logger.handlers.clear()


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret[:12]}… leaked into the log: {text}"


# --- JSON lines and context -----------------------------------------------------------------------------------


def test_json_line_carries_bound_context(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.info("before")
    with log_context(request_id="req-1", job_id="job-9", attempt=2):
        logger.info("rendering %s", "astronaut", extra={"frames": 120})
        with log_context(stage="tts"):
            logger.warning("slow")
    logger.info("after")

    before, rendering, slow, after = lines(buffer)
    assert list(rendering)[:4] == ["time", "level", "logger", "message"]
    assert rendering["time"].endswith("Z") and rendering["level"] == "INFO" and rendering["logger"] == logger.name
    assert rendering["message"] == "rendering astronaut"
    assert (rendering["request_id"], rendering["job_id"], rendering["attempt"]) == ("req-1", "job-9", 2)
    assert rendering["frames"] == 120 and "stage" not in rendering
    assert slow["stage"] == "tts" and slow["job_id"] == "job-9" and slow["level"] == "WARNING"
    for line in (before, after):
        assert not {"request_id", "job_id", "attempt", "stage"} & set(line)


def test_explicit_extra_wins_over_context(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    with log_context(job_id="bound"):
        logger.info("x", extra={"job_id": "explicit"})
    assert lines(buffer)[0]["job_id"] == "explicit"


def test_unknown_context_field_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown log context field"), log_context(msg="clobbers the record"):
        pass


def test_configure_logging_twice_installs_one_handler() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("DEBUG", stream=first)
        configure_logging("INFO", stream=second)
        logging.getLogger("test.observability.root").info("once %s", API_KEY)
        logging.getLogger("test.observability.root").debug("below the level")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert first.getvalue() == ""
    (line,) = lines(second)
    assert line["message"] == "once thk_abc123_[REDACTED]"
    assert all(any(type(f).__name__ == "RedactingFilter" for f in h.filters) for h in saved_handlers)


def test_text_mode_is_one_readable_line() -> None:
    buffer = io.StringIO()
    logger = logging.getLogger(f"test.observability.text.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(make_handler(buffer, json=False))
    logger.setLevel(logging.INFO)
    with log_context(job_id="job-9"):
        logger.info("link %s", LINK)
    text = buffer.getvalue()
    assert text.endswith("[job_id=job-9]\n") and " INFO " in text
    assert_clean(text)


# --- redaction ------------------------------------------------------------------------------------------------


def test_secrets_never_reach_the_output(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.info(f"Authorization: Bearer {JWT}")
    logger.info("sent %s", {"Authorization": "Basic dXNlcjpwYXNzd29yZA==", "Cookie": "session=s3cr3t; theme=dark"})
    logger.info("token %s for key %s", JWT, API_KEY)
    logger.info("download %s", LINK)
    logger.info("upload to %s then %s", PRESIGNED, "done")
    logger.info("query only: X-Amz-Credential=%s&X-Amz-Signature=%s", AMZ_CRED, AMZ_SIG)
    logger.info("headers", extra={"headers": {"Authorization": f"Bearer {JWT}", "Accept": "video/mp4"},
                                  "url": PRESIGNED, "links": [LINK], "api_key": API_KEY})
    logger.info({"event": "uploaded", "target": PRESIGNED})
    try:
        raise RuntimeError(f"upload to {PRESIGNED} failed")
    except RuntimeError:
        logger.exception("upload crashed for %s", API_KEY)

    output = buffer.getvalue()
    assert_clean(output)
    assert "dXNlcjpwYXNzd29yZA" not in output and "s3cr3t" not in output
    records = lines(buffer)
    assert records[0]["message"] == "Authorization: [REDACTED]"
    assert records.pop(1)["message"] == "sent {'Authorization': '[REDACTED]', 'Cookie': '[REDACTED]'}"
    assert records[1]["message"] == "token [REDACTED] for key thk_abc123_[REDACTED]"
    assert records[2]["message"] == "download https://bridge.example/files/0123abcd/video.mp4?[REDACTED]"
    assert records[3]["message"] == f"upload to {PRESIGNED.partition('?')[0]}?[REDACTED] then done"
    assert "X-Amz-Signature=[REDACTED]" in records[4]["message"]
    assert records[5]["headers"] == {"Authorization": "[REDACTED]", "Accept": "video/mp4"}
    assert records[5]["api_key"] == "[REDACTED]"
    assert records[6]["event"] == "uploaded"
    assert records[-1]["message"] == "upload crashed for thk_abc123_[REDACTED]"
    assert "RuntimeError: upload to https://bucket.s3.amazonaws.com/" in records[-1]["exc_info"]


def test_unformattable_record_keeps_no_secret() -> None:
    """logging prints a broken record's msg and args to stderr; the filter has scrubbed them by then."""
    record = logging.getLogger("test").makeRecord("test", logging.INFO, __file__, 1, "bad %s %s {%s}",
                                                   (LINK, {"url": PRESIGNED}), None)
    assert RedactingFilter().filter(record)
    assert_clean(repr(record.msg) + repr(record.args))


def test_redaction_leaves_ordinary_text_alone(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    message = "missing bearer token: send 'Authorization: Bearer <token>'; job 0123abcd at https://x.example/v1/jobs?limit=5"
    logger.info(message)
    assert lines(buffer)[0]["message"] == message


# --- Flask request ids and access lines -----------------------------------------------------------------------


@pytest.fixture
def flask_app() -> Iterator[tuple[Flask, io.StringIO]]:
    app = Flask("observability-test")
    init_request_logging(app)

    @app.get("/hello")
    def hello() -> dict[str, str | None]:
        g.sub = "user-1"
        return {"request_id": get_request_id()}

    @app.get("/files/<job_id>/<name>")
    def download(job_id: str, name: str) -> str:
        return "bytes"

    buffer = io.StringIO()
    access = logging.getLogger("bridge.access")
    handler = make_handler(buffer)
    access.addHandler(handler)
    saved = access.level
    access.setLevel(logging.DEBUG)
    yield app, buffer
    access.removeHandler(handler)
    access.setLevel(saved)


def test_request_id_is_echoed_and_bound(flask_app: tuple[Flask, io.StringIO]) -> None:
    app, buffer = flask_app
    response = app.test_client().get("/hello?x=1", headers={"X-Request-ID": "plugin-run_42.a"})
    assert response.headers["X-Request-ID"] == "plugin-run_42.a"
    assert response.get_json() == {"request_id": "plugin-run_42.a"}
    (line,) = lines(buffer)
    assert line["logger"] == "bridge.access" and line["level"] == "INFO"
    assert (line["method"], line["path"], line["status"], line["sub"]) == ("GET", "/hello", 200, "user-1")
    assert line["request_id"] == "plugin-run_42.a" and 0 <= line["duration_s"] < 5
    assert get_request_id() is None  # nothing leaks into the next request on this thread


@pytest.mark.parametrize("header", [None, "", "a" * 65, "has space", "a/b", "ünïcode", "a;b"])
def test_missing_or_unsafe_request_id_is_replaced(flask_app: tuple[Flask, io.StringIO], header: str | None) -> None:
    app, buffer = flask_app
    headers = {} if header is None else {"X-Request-ID": header}
    response = app.test_client().get("/hello", headers=headers)
    rid = response.headers["X-Request-ID"]
    assert rid != header and len(rid) == 32 and int(rid, 16) >= 0
    assert response.get_json() == {"request_id": rid} and lines(buffer)[0]["request_id"] == rid


def test_access_line_drops_the_query_string(flask_app: tuple[Flask, io.StringIO]) -> None:
    app, buffer = flask_app
    client = app.test_client()
    assert client.get(f"/files/0123abcd/video.mp4?exp=1900000000&sig={LINK_SIG}").status_code == 200
    missing = client.get("/nowhere?token=" + JWT)
    assert missing.status_code == 404 and len(missing.headers["X-Request-ID"]) == 32
    download, not_found = lines(buffer)
    assert download["path"] == "/files/0123abcd/video.mp4" and "sub" not in download
    assert not_found["status"] == 404 and not_found["path"] == "/nowhere"
    assert_clean(buffer.getvalue())


# --- API collector --------------------------------------------------------------------------------------------


def scrape(registry: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    body, content_type = metrics_response(registry)
    assert content_type.startswith("text/plain")
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            families.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return families


def test_collector_exports_the_tables_state() -> None:
    collector = BridgeCollector(
        queue_depth=lambda: {"render": 3},
        jobs_by_status=lambda: {"queued": 3, "running": 1, "succeeded": 10, "failed": 2, "canceled": 0},
        failures_by_reason=lambda: {"time_limit": 1, "unknown_voice": 1},
        heartbeats=lambda: {"render-1@host": 990.0, "render-2@host": 1001.0},
        storage_free_bytes=lambda: 5 * 2**30,
        clock=lambda: 1000.0,
    )
    samples = scrape(make_registry(collector))
    assert samples["bridge_queue_depth"] == {(("queue", "render"),): 3}
    assert samples["bridge_jobs"][(("status", "running"),)] == 1
    assert samples["bridge_jobs"][(("status", "canceled"),)] == 0
    assert samples["bridge_jobs_failed"] == {(("reason", "time_limit"),): 1, (("reason", "unknown_voice"),): 1}
    assert samples["bridge_worker_heartbeat_age_seconds"] == {
        (("worker", "render-1@host"),): 10.0, (("worker", "render-2@host"),): 0.0}  # a clock ahead is not negative
    assert samples["bridge_storage_free_bytes"] == {(): 5 * 2**30}
    assert set(samples["bridge_collect_ok"].values()) == {1.0}
    assert "process_resident_memory_bytes" in samples


def test_a_failing_source_does_not_break_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    healthy = {"ok": True}

    def jobs() -> dict[str, int]:
        if not healthy["ok"]:
            raise RuntimeError("database is locked")
        return {"queued": 1}

    def queue() -> dict[str, int]:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    registry = make_registry(BridgeCollector(queue_depth=queue, jobs_by_status=jobs, storage_free_bytes=lambda: 7),
                             process_metrics=False)
    with caplog.at_level(logging.WARNING, logger="bridge.metrics"):
        first = scrape(registry)
        healthy["ok"] = False
        second = scrape(registry)
        third = scrape(registry)
    assert "bridge_queue_depth" not in first and first["bridge_jobs"] == {(("status", "queued"),): 1}
    assert first["bridge_storage_free_bytes"] == {(): 7}
    assert first["bridge_collect_ok"][(("family", "queue_depth"),)] == 0
    assert "bridge_jobs" not in second and second["bridge_storage_free_bytes"] == {(): 7}
    assert third["bridge_collect_ok"][(("family", "jobs"),)] == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per source, not once per scrape
    assert any("queue_depth" in w for w in warnings) and any("database is locked" in w for w in warnings)


def test_registering_does_not_call_the_sources() -> None:
    def boom() -> dict[str, int]:
        raise AssertionError("called at registration")

    make_registry(BridgeCollector(jobs_by_status=boom), process_metrics=False)


def test_openmetrics_when_asked() -> None:
    registry = make_registry(BridgeCollector(storage_free_bytes=lambda: 1), process_metrics=False)
    body, content_type = metrics_response(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


# --- worker metrics -------------------------------------------------------------------------------------------


def test_stage_timer_observes_even_when_the_stage_fails(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    metrics = WorkerMetrics()
    with stage_timer(metrics, "tts"):
        logger.info("speaking")
    with pytest.raises(ValueError), stage_timer(metrics, "encode"):
        raise ValueError("ffmpeg died")
    metrics.observe_stages({"lipsync": 2.0, "total": 9.0})
    samples = scrape(metrics.registry)
    counts = samples["bridge_stage_duration_seconds_count"]
    assert counts == {(("stage", "tts"),): 1, (("stage", "encode"),): 1, (("stage", "lipsync"),): 1}
    assert lines(buffer)[0]["stage"] == "tts"


def test_worker_counters() -> None:
    metrics = WorkerMetrics()
    metrics.attempt_started(queue_wait_s=1.5)
    metrics.attempt_started()
    metrics.job_finished("succeeded")
    metrics.job_finished("failed", "time_limit")
    samples = scrape(metrics.registry)
    assert samples["bridge_job_attempts_total"] == {(): 2}
    assert samples["bridge_jobs_finished_total"] == {
        (("status", "succeeded"),): 1, (("status", "failed"),): 1, (("status", "canceled"),): 0}
    assert samples["bridge_job_failures_total"] == {(("reason", "time_limit"),): 1}
    assert samples["bridge_job_queue_wait_seconds_count"] == {(): 1}


def test_worker_metrics_server_serves_stage_histograms() -> None:
    metrics = WorkerMetrics()
    metrics.observe_stage("lipsync", 3.2)
    metrics.observe_stage("lipsync", 0.07)
    assert start_worker_metrics_server(0, registry=metrics.registry) is None
    port = free_port()
    server = start_worker_metrics_server(port, registry=metrics.registry)
    assert server is not None
    try:
        response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        histogram = {(s.name, s.labels.get("le")): s.value for f in text_string_to_metric_families(response.text)
                     if f.name == "bridge_stage_duration_seconds" for s in f.samples}
        assert histogram[("bridge_stage_duration_seconds_count", None)] == 2
        assert histogram[("bridge_stage_duration_seconds_bucket", "0.1")] == 1
        assert histogram[("bridge_stage_duration_seconds_bucket", "5.0")] == 2
        assert histogram[("bridge_stage_duration_seconds_bucket", "900.0")] == 2
        assert start_worker_metrics_server(port, registry=metrics.registry) is None  # in use: logged, not raised
    finally:
        server.shutdown()
        server.server_close()


# --- heartbeats and queue depth in a real Redis ---------------------------------------------------------------



@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    client.flushdb()
    yield client
    client.close()


def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_heartbeats_are_written_read_and_expire(client: redis.Redis) -> None:
    client.set("unrelated", "1")
    before = time.time()
    beat(client, "render-1@host", ttl_s=0.4)
    beat(client, "render-2@host", ttl_s=30)
    beats = read_heartbeats(client)
    assert set(beats) == {"render-1@host", "render-2@host"}
    assert before - 1 <= beats["render-1@host"] <= time.time() + 1
    assert 0 < client.pttl(HEARTBEAT_KEY_PREFIX + "render-1@host") <= 400
    assert wait_for(lambda: "render-1@host" not in read_heartbeats(client))
    assert set(read_heartbeats(client)) == {"render-2@host"}

    ages = scrape(make_registry(BridgeCollector(heartbeats=lambda: read_heartbeats(client)), process_metrics=False))
    assert list(ages["bridge_worker_heartbeat_age_seconds"]) == [(("worker", "render-2@host"),)]


def test_heartbeat_thread_beats_and_forgets_on_stop(client: redis.Redis) -> None:
    key = HEARTBEAT_KEY_PREFIX + "render-3@host"
    with Heartbeat(client, "render-3@host", interval_s=0.05, ttl_s=1.0):
        assert wait_for(lambda: client.exists(key))
        first = float(client.get(key))
        assert wait_for(lambda: float(client.get(key) or 0) > first)
    assert not client.exists(key)


def test_heartbeat_survives_a_dead_redis(caplog: pytest.LogCaptureFixture) -> None:
    class Counted(Heartbeat):
        beats = 0

        def beat_once(self) -> bool:
            self.beats += 1
            return super().beat_once()

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.1, socket_timeout=0.1, retry=Retry(NoBackoff(), 0))
    heartbeat = Counted(dead, "render-4@host", interval_s=0.02)
    with caplog.at_level(logging.WARNING, logger="bridge.metrics"):
        heartbeat.start()
        deadline = time.monotonic() + 60
        while heartbeat.beats < 5:  # several failed beats, however slowly this machine schedules the thread
            assert time.monotonic() < deadline, "the heartbeat thread stopped beating"
            time.sleep(0.01)
        alive = heartbeat.running
        heartbeat.stop(timeout_s=2)
    assert alive and not heartbeat.running and heartbeat.beat_once() is False
    assert len([r for r in caplog.records if "heartbeat for render-4@host failed" in r.getMessage()]) == 1


def test_queue_depth_counts_every_priority_list(client: redis.Redis) -> None:
    client.rpush("render", "a", "b")
    client.rpush(f"render{KOMBU_PRIORITY_SEP}3", "c")
    client.rpush(f"render{KOMBU_PRIORITY_SEP}9", "d")
    assert redis_queue_depth(client, ["render", "other"])() == {"render": 4, "other": 0}
