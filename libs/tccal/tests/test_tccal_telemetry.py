"""JSON logs with trace ids; no secret reaches a log line."""

from __future__ import annotations

import io
import json
import logging

from tccal import secrets, telemetry
from tccal.config import load_config


def capture(service: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(telemetry.JsonFormatter(service))
    logger = logging.getLogger(f"test.{service}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_log_lines_are_json_with_trace_ids() -> None:
    telemetry.setup("test-telemetry")
    logger, stream = capture("svc")
    with telemetry.tracer("t").start_as_current_span("work") as span:
        logger.info("synced %s", "anna@example.com", extra={"mailbox": "anna@example.com", "items": 3})
    entry = json.loads(stream.getvalue())
    assert entry["message"] == "synced anna@example.com"
    assert entry["mailbox"] == "anna@example.com" and entry["items"] == 3
    assert entry["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert entry["level"] == "INFO" and entry["service"] == "svc"


def test_revealed_secrets_never_reach_a_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    password = "Very$ecret-Exchange-Pw"
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "calendarProviders": [
                    {"host": "ex", "credentials": [{"login": "svc", "password": secrets.encrypt(password)}]}
                ]
            }
        )
    )
    config = load_config(path)
    plain = secrets.reveal(config.calendar_providers[0].credentials[0].password)
    assert plain == password
    logger, stream = capture("redact")
    logger.warning("login failed for svc with %s", plain, extra={"password": plain})
    try:
        raise RuntimeError(f"auth error {plain}")
    except RuntimeError:
        logger.exception("boom")
    output = stream.getvalue()
    assert password not in output
    assert output.count("***") >= 3
