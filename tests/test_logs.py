import io
import json
import logging

from perf_pipelines.logs import SecretRedactor, configure_logging


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_identity() -> None:
    stream = io.StringIO()
    configure_logging("INFO", agent_id="perf-9", agent_type="performance", stream=stream)
    logging.getLogger("perf.test").info("scraped %d targets", 3, extra={"run_id": "abc"})
    logging.getLogger("perf.test").debug("not shown at INFO")
    (record,) = _records(stream)
    assert record["message"] == "scraped 3 targets"
    assert record["level"] == "INFO"
    assert record["logger"] == "perf.test"
    assert record["agent_id"] == "perf-9"
    assert record["agent_type"] == "performance"
    assert record["run_id"] == "abc"
    assert str(record["timestamp"]).endswith("+00:00")


def test_exception_info_is_included() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("perf.test").exception("scrape failed")
    (record,) = _records(stream)
    assert "RuntimeError: boom" in str(record["exception"])


def test_log_level_is_honoured() -> None:
    stream = io.StringIO()
    configure_logging("WARNING", stream=stream)
    logging.getLogger("perf.test").info("hidden")
    logging.getLogger("perf.test").warning("shown")
    assert [r["message"] for r in _records(stream)] == ["shown"]


def test_secrets_never_reach_the_log() -> None:
    stream = io.StringIO()
    configure_logging("INFO", secrets=["tok-123456789"], stream=stream)
    log = logging.getLogger("perf.test")
    log.info("calling with token tok-123456789")
    log.info("header Authorization: Bearer abc.def.ghi")
    log.info("url http://admin:hunter22@db:5432/perf", extra={"detail": "password=hunter22"})
    try:
        raise ValueError("token=tok-123456789 rejected")
    except ValueError:
        log.exception("failed")
    output = stream.getvalue()
    for secret in ("tok-123456789", "abc.def.ghi", "hunter22"):
        assert secret not in output
    assert "***" in output


def test_redactor_leaves_ordinary_text_alone() -> None:
    redact = SecretRedactor()
    text = "target vllm-a is down: timeout after 5s (http://10.0.0.1:8000/metrics)"
    assert redact(text) == text
