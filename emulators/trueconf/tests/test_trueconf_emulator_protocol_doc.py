"""docs/bridge-protocol.md and docs/bridge-protocol.schema.json agree with each other and with the emulator."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from trueconf_emulator.protocol import ALL_METHODS, CloseCode, ErrorCode
from trueconf_emulator.schema import FrameValidator, load_schema, locate_schema

DOC = Path(__file__).resolve().parents[3] / "docs" / "bridge-protocol.md"
EXAMPLE_RE = re.compile(r"<!-- example: ([A-Za-z.]+)\.(request|reply) -->\n```json\n(.*?)\n```", re.S)


def _examples() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in EXAMPLE_RE.finditer(DOC.read_text(encoding="utf-8"))]


EXAMPLES = _examples()
SCHEMA = load_schema()
VALIDATOR = FrameValidator(SCHEMA)


def test_schema_file_is_the_one_in_docs_and_is_valid_2020_12() -> None:
    assert locate_schema() == DOC.parent / "bridge-protocol.schema.json"
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_every_method_has_request_and_reply_examples() -> None:
    found = {(method, kind) for method, kind, _ in EXAMPLES}
    for method in ALL_METHODS:
        assert (method, "request") in found, f"no request example for {method}"
        assert (method, "reply") in found, f"no reply example for {method}"
    assert {method for method, _, _ in EXAMPLES} == set(ALL_METHODS)
    # Every example marker is followed by a json block (none dangling).
    markers = re.findall(r"<!-- example: ", DOC.read_text(encoding="utf-8"))
    assert len(markers) == len(EXAMPLES)


@pytest.mark.parametrize(
    ("method", "kind", "body"), EXAMPLES, ids=[f"{m}.{k}#{i}" for i, (m, k, _) in enumerate(EXAMPLES)]
)
def test_example_validates_against_its_definition_and_the_root_schema(method: str, kind: str, body: str) -> None:
    frame = json.loads(body)
    problem = VALIDATOR.problem(frame, f"{method}.{kind}")
    assert problem is None, problem
    jsonschema.Draft202012Validator(SCHEMA).validate(frame)
    assert frame["type"] == (1 if kind == "request" else 2)
    if kind == "request":
        assert frame["method"] == method


def _example(method: str, kind: str, index: int = 0) -> dict[str, Any]:
    bodies = [json.loads(body) for m, k, body in EXAMPLES if (m, k) == (method, kind)]
    return copy.deepcopy(bodies[index])


def test_schema_rejects_what_the_document_forbids() -> None:
    upsert = _example("calendar.upsert", "request")

    private = copy.deepcopy(upsert)
    private["payload"]["event"]["private"] = True
    problem = VALIDATOR.problem(private, "calendar.upsert.request")
    assert problem is not None and problem.field.startswith("event.")

    missing = copy.deepcopy(upsert)
    del missing["payload"]["event"]["start"]
    problem = VALIDATOR.problem(missing, "calendar.upsert.request")
    assert problem is not None and problem.field == "event.start"

    local_time = copy.deepcopy(upsert)
    local_time["payload"]["event"]["end"] = "2025-06-28T12:30:00+03:00"
    problem = VALIDATOR.problem(local_time, "calendar.upsert.request")
    assert problem is not None and problem.field == "event.end"

    typo = copy.deepcopy(upsert)
    typo["payload"]["event"]["attendees"][1]["respone"] = "accepted"
    problem = VALIDATOR.problem(typo, "calendar.upsert.request")
    assert problem is not None and problem.field == "event.attendees[1].respone"

    extension = copy.deepcopy(upsert)
    extension["payload"]["event"]["x-exchangeChangeKey"] = "DwAAABYA"
    assert VALIDATOR.problem(extension, "calendar.upsert.request") is None

    cancel = _example("calendar.cancel", "request")
    cancel["payload"]["event"]["cancelled"] = False
    problem = VALIDATOR.problem(cancel, "calendar.cancel.request")
    assert problem is not None and problem.field == "event.cancelled"

    ack = _example("calendar.upsert", "reply")
    del ack["payload"]["seq"]
    problem = VALIDATOR.problem(ack, "calendar.upsert.reply")
    assert problem is not None and problem.field == "seq"

    auth = _example("auth", "request")
    auth["payload"]["serverId"] = "server.trueconf.name"
    problem = VALIDATOR.problem(auth, "auth.request")
    assert problem is not None and problem.field == "serverId"


def _table_rows(heading: str) -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_error_code_table_matches_the_emulator() -> None:
    rows = _table_rows("## 7. Error codes")
    assert {int(row[0]): row[1] for row in rows} == {int(code): code.name for code in ErrorCode}
    names = set(SCHEMA["$defs"]["errorPayload"]["properties"]["errorName"]["enum"])
    assert names == {code.name for code in ErrorCode if code is not ErrorCode.OK}


def test_close_code_table_matches_the_emulator() -> None:
    rows = _table_rows("## 8. WebSocket close codes")
    assert {int(row[0]) for row in rows} == {int(code) for code in CloseCode}
