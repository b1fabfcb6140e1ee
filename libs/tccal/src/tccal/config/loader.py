"""Read config.json as the guide writes it (comments, trailing commas), apply environment overrides, validate.

Environment overrides: TC_CALENDAR__<KEY>[__<KEY>...]=<value>, keys matched case-insensitively, list items by
index (TC_CALENDAR__CALENDARPROVIDERS__0__PORT=8443). A value that parses as JSON is taken as JSON, anything
else as a string. Every problem is reported as one line: `<json path>: <value> <what was expected>`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import json5
from pydantic import BaseModel, ValidationError

from tccal import secrets
from tccal.config.schema import ALL_SERVICE_NAMES, PROVIDER_TYPES, Config, iter_secrets

ENV_PREFIX = "TC_CALENDAR__"
CONFIG_ENV = "TC_CALENDAR_CONFIG"  # names config.json when --config is not given
EXIT_CONFIG = 2  # exit code of every process refusing a bad config
_HIDDEN_KEYS = {"password", "secret", "clientSecret", "privateKey", "adminToken", "token"}
#: config.json is at most 5 levels deep; anything far deeper is not a config file (and would exhaust recursion).
MAX_DEPTH = 32


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The configuration is unusable; `problems` has one entry per mistake."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def parse_config_text(text: str, source: str = "config") -> dict[str, Any]:
    """Parse JSON with // and /* */ comments and trailing commas into a dict."""
    try:
        document = json5.loads(text)
    except ValueError as exc:
        raise ConfigError(source, [ConfigProblem("", f"{source} is not valid JSON: {exc}")]) from exc
    except RecursionError as exc:  # the parser recurses per level: thousands of nested [ or { exhaust the stack
        raise ConfigError(source, [ConfigProblem("", f"{source} nests too deeply to be a config file")]) from exc
    depth = _depth(document)
    if depth > MAX_DEPTH:
        raise ConfigError(source, [ConfigProblem("", f"{source} nests {depth} levels deep (at most {MAX_DEPTH})")])
    if not isinstance(document, dict):
        raise ConfigError(source, [ConfigProblem("", f"{source} must hold a JSON object at the top")])
    return document


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    check_secrets: bool = True,
) -> Config:
    """Load, override from the environment and validate; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "(defaults)"
    document: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, [ConfigProblem("", f"cannot read {source}: {exc.strerror}")]) from exc
        document = parse_config_text(text, source)
    overridden = apply_env_overrides(document, env)
    try:
        config = Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, describe_errors(exc, overridden)) from exc
    problems = secret_problems(config, check_secrets=check_secrets)
    if problems:
        raise ConfigError(source, problems)
    return config


def secret_problems(config: Config, *, check_secrets: bool) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for json_path, value in iter_secrets(config):
        if not value:
            continue
        if not secrets.is_encrypted(value):
            if not config.allow_plaintext_passwords:
                problems.append(
                    ConfigProblem(
                        json_path,
                        "(hidden) is not encrypted: make it with tc-calendar --hash_pass, "
                        "or set allowPlaintextPasswords: true",
                    )
                )
            continue
        if check_secrets:
            try:
                secrets.decrypt(value)
            except secrets.SecretError as exc:
                problems.append(ConfigProblem(json_path, f"(hidden) {exc}"))
    return problems


def apply_env_overrides(document: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply TC_CALENDAR__* variables to `document` in place; return {json path: variable name}."""
    applied: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        path = _set_path(document, keys, _parse_env_value(environ[name]))
        applied[path] = name
    return applied


def _parse_env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _set_path(document: dict[str, Any], keys: list[str], value: Any) -> str:
    node: Any = document
    path = ""
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            index = int(key) if key.isdigit() else len(node)
            while len(node) <= index:
                node.append({})
            path += f"[{index}]"
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        actual = _match_key(node, key)
        path = f"{path}.{actual}" if path else actual
        if last:
            node[actual] = value
        else:
            if not isinstance(node.get(actual), (dict, list)):
                node[actual] = [] if keys[i + 1].isdigit() else {}
            node = node[actual]
    return path


def _match_key(node: dict[str, Any], key: str) -> str:
    """The key of config.json that an environment variable's `key` names: case-insensitively, and with `_` for
    `-` (POSIX shells allow no dash in a variable name: TC_CALENDAR__GRPC__SERVICES__EWS_INGEST__GRPCPORT)."""
    wanted = _key_form(key)
    for existing in node:
        if _key_form(existing) == wanted:
            return existing
    for known in _known_keys():
        if _key_form(known) == wanted:
            return known
    return key


def _key_form(key: str) -> str:
    return key.lower().replace("-", "_")


def _known_keys() -> Iterable[str]:
    yield from ALL_SERVICE_NAMES  # keys of grpc.services (a mapping, so not among the fields below)
    seen: set[str] = set()
    stack: list[type[BaseModel]] = [Config]
    while stack:
        model = stack.pop()
        for name, field in model.model_fields.items():
            alias = field.alias or name
            if alias not in seen:
                seen.add(alias)
                yield alias
            stack.extend(_models_in(field.annotation))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


_MESSAGES = {
    "bool_type": "is not a boolean (true or false)",
    "bool_parsing": "is not a boolean (true or false)",
    "int_type": "is not an integer",
    "int_parsing": "is not an integer",
    "int_from_float": "is not a whole number",
    "string_type": "is not a string",
    "list_type": "is not a list",
    "dict_type": "is not an object",
    "model_type": "is not an object",
    "model_attributes_type": "is not an object",
    "extra_forbidden": "unknown key",
}


#: Error kinds of rules over a whole entry (schema model validators), told without the entry's value.
_ENTRY_RULES = frozenset({"graph_credential"})


def describe_errors(exc: ValidationError, overridden: Mapping[str, str]) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        path = _format_loc(error["loc"])
        kind = error["type"]
        ctx = error.get("ctx") or {}
        value = error.get("input")
        hidden = any(str(part) in _HIDDEN_KEYS for part in error["loc"])
        shown = "(hidden)" if hidden else _show(value)
        if kind == "missing":
            message = "is missing (required)"
        elif kind == "extra_forbidden":
            message = f"unknown key{_allowed_keys_hint(error['loc'])}"
        elif kind in _ENTRY_RULES:  # a rule over the whole entry: its value would only repeat the entry
            message = error["msg"]
        elif kind in _MESSAGES:
            message = f"{shown} {_MESSAGES[kind]}"
        elif kind == "greater_than_equal":
            message = f"{shown} is too small (minimum {ctx.get('ge')})"
        elif kind == "less_than_equal":
            message = f"{shown} is too large (maximum {ctx.get('le')})"
        elif kind == "too_short":
            message = f"{shown} is too short (at least {ctx.get('min_length')} item(s))"
        elif kind == "literal_error":
            message = f"{shown} is not one of {ctx.get('expected')}"
        else:
            message = f"{shown} {error['msg']}"
        origin = overridden.get(path)
        if origin:
            message += f" (from environment variable {origin})"
        problems.append(ConfigProblem(path, message))
    return problems


def _allowed_keys_hint(loc: tuple[Any, ...]) -> str:
    model: Any = Config
    models: list[Any] = []
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        tagged = [m for m in models if _tag_of(m) == part]
        if tagged:  # the union's tag (calendarProviders[i].<type>): the variant of that type
            model = tagged[0]
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        field = fields.get(str(part))
        models = _models_in(field.annotation) if field else []
        model = models[0] if models else None
    if model is None:
        return ""
    allowed = ", ".join(f.alias or n for n, f in model.model_fields.items())
    return f" (expected one of: {allowed})"


def _tag_of(model: Any) -> str | None:
    field = model.model_fields.get("type")
    args: tuple[Any, ...] = tuple(getattr(field.annotation, "__args__", ())) if field is not None else ()
    if len(args) == 1 and args[0] in PROVIDER_TYPES:
        return str(args[0])
    return None


def _format_loc(loc: tuple[Any, ...]) -> str:
    path = ""
    for index, part in enumerate(loc):
        if index >= 2 and loc[index - 2] == "calendarProviders" and part in PROVIDER_TYPES:
            continue  # the union's tag (the entry's `type`), not a key of the file
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def _show(value: Any) -> str:
    text = json.dumps(_masked(value), ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _masked(value: Any) -> Any:
    """`value` with every secret key's value hidden, at any depth: an object put where a list belongs (a
    mis-shaped `credentials`) is shown in the error, and its password must not be."""
    if isinstance(value, dict):
        return {k: "(hidden)" if str(k) in _HIDDEN_KEYS else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value
