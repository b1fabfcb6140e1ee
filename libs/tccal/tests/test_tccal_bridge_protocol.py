"""tccal.bridge_protocol: the schema is docs/'s one file, a built wheel carries it (images have no docs/), and
validation names the failing field, choosing a reply's oneOf branch as each end asks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tccal import bridge_protocol
from tccal.bridge_protocol import SCHEMA_FILE, CloseCode, ErrorCode, FrameValidator, format_path

REPO = Path(__file__).resolve().parents[3]
DOC_SCHEMA = REPO / "docs" / SCHEMA_FILE


def test_the_schema_is_the_documents() -> None:
    assert bridge_protocol.schema_path() == DOC_SCHEMA  # editable install: the repository's one file
    assert bridge_protocol.load_schema() == json.loads(DOC_SCHEMA.read_text("utf-8"))


def test_the_wheel_carries_the_schema(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO / "libs" / "tccal",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"tccal/{SCHEMA_FILE}" in names and "tccal/bridge_protocol.py" in names
    assert zipfile.ZipFile(wheel).read(f"tccal/{SCHEMA_FILE}") == DOC_SCHEMA.read_bytes()


def test_codes_are_the_documents() -> None:
    document = (REPO / "docs" / "bridge-protocol.md").read_text("utf-8")
    for code in ErrorCode:
        assert code.name in document, code
    for close in CloseCode:
        assert str(int(close)) in document, close


def test_frames_and_paths() -> None:
    assert bridge_protocol.request_frame(7, "ping", {}) == {"type": 1, "id": 7, "method": "ping", "payload": {}}
    assert bridge_protocol.reply_frame(7, {"errorCode": 0}) == {"type": 2, "id": 7, "payload": {"errorCode": 0}}
    assert format_path(["events", 0, "attendees", 2, "email"]) == "events[0].attendees[2].email"
    assert format_path([]) == ""


def test_validation_names_the_field() -> None:
    validator = FrameValidator()
    assert validator.has_definition("requestFrame") and not validator.has_definition("no.such")
    assert validator.problem({"type": 1, "id": 1, "method": "ping", "payload": {}}, "requestFrame") is None
    problem = validator.problem({"type": 1, "method": "ping", "payload": {}}, "requestFrame")
    assert problem is not None and problem.field == "id", problem
    problem = validator.problem({"type": 1, "id": 1, "method": "ping", "payload": {}, "extra": 1}, "requestFrame")
    assert problem is not None and problem.field == "extra", problem
    with pytest.raises(KeyError):
        validator.problem({}, "no.such")


def test_a_reply_can_be_judged_by_its_error_code() -> None:
    """An error reply with a bad field: by errorCode, the error shape is the one that is wrong."""
    schema = {
        "$defs": {
            "reply": {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"errorCode": {"const": 0}, "data": {"type": "object"}},
                        "required": ["errorCode", "data"],
                    },
                    {
                        "type": "object",
                        "properties": {"errorCode": {"minimum": 1}, "errorName": {"type": "string"}},
                        "required": ["errorCode", "errorName"],
                    },
                ]
            }
        }
    }
    frame = {"errorCode": 5, "errorName": 5, "data": {"x": 1}}
    by_code = FrameValidator(schema, by_error_code=True).problem(frame, "reply")
    assert by_code is not None and by_code.field == "errorName", by_code
    assert FrameValidator(schema, by_error_code=True).problem({"errorCode": 5, "errorName": "X"}, "reply") is None


EXAMPLE = re.compile(r"<!-- example: ([A-Za-z.]+)\.(request|reply) -->\n```json\n(.*?)\n```", re.S)
ODD_VALUES: list[Any] = [None, True, False, 0, 1, -1, 1.5, 2**60, "", "x" * 5000, "not-a-date", [], {}, [1], {"a": 1}]


def _mutations(frame: Any) -> Iterator[Any]:
    """The frame with, at every place in it, the value replaced by each odd value, a key dropped or one added."""
    yield frame
    if isinstance(frame, dict):
        yield {**frame, "unexpectedKey": 1}
        for key, value in frame.items():
            yield {k: v for k, v in frame.items() if k != key}
            for odd in ODD_VALUES:
                yield {**frame, key: odd}
            for inner in _mutations(value):
                yield {**frame, key: inner}
    elif isinstance(frame, list):
        yield frame + frame[:1]
        for index, value in enumerate(frame):
            for inner in _mutations(value):
                yield [*frame[:index], inner, *frame[index + 1 :]]


def test_the_compiled_validator_agrees_with_jsonschema_on_every_example_and_its_mutations() -> None:
    """The fast path may only answer what jsonschema would: on the document's examples and ~thousands of frames
    broken from them (wrong types, missing and unexpected keys, bools for numbers), both give the same verdict."""
    document = (REPO / "docs" / "bridge-protocol.md").read_text("utf-8")
    examples = [(f"{m.group(1)}.{m.group(2)}", json.loads(m.group(3))) for m in EXAMPLE.finditer(document)]
    assert len(examples) >= 10
    validator = FrameValidator()
    envelope = {"request": "requestFrame", "reply": "replyFrame"}
    checked = disagreements = 0
    failures: list[str] = []
    for definition, example in examples:
        for frame in _mutations(example):
            for target in (definition, envelope[definition.rsplit(".", 1)[1]]):
                full = validator._validator(target).is_valid(frame)
                checked += 1
                if validator.is_valid(frame, target) != full:
                    disagreements += 1
                    failures.append(f"{target}: compiled {not full}, jsonschema {full}: {json.dumps(frame)[:300]}")
                assert (validator.problem(frame, target) is None) == full
    assert checked > 2000
    assert not failures, f"{disagreements} of {checked} disagree:\n" + "\n".join(failures[:20])
