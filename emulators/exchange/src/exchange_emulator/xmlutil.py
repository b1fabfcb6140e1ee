"""Namespaces and small lxml helpers shared by the EWS emulator."""

from __future__ import annotations

import datetime as dt

from lxml import etree

NS_S = "http://schemas.xmlsoap.org/soap/envelope/"
NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
NS_E = "http://schemas.microsoft.com/exchange/services/2006/errors"
NS_A = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
NS_WSA = "http://www.w3.org/2005/08/addressing"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"

NSMAP = {"s": NS_S, "m": NS_M, "t": NS_T}

Element = etree._Element

UTC = dt.UTC

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, remove_blank_text=False)


def t(name: str) -> str:
    return f"{{{NS_T}}}{name}"


def m(name: str) -> str:
    return f"{{{NS_M}}}{name}"


def s(name: str) -> str:
    return f"{{{NS_S}}}{name}"


def local(tag: object) -> str:
    text = str(tag)
    return text.rsplit("}", 1)[-1]


def ns_of(tag: object) -> str:
    text = str(tag)
    if text.startswith("{"):
        return text[1:].split("}", 1)[0]
    return ""


def sub(parent: Element, tag: str, text: str | None = None, **attrs: str) -> Element:
    el = etree.SubElement(parent, tag)
    for key, value in attrs.items():
        el.set(key, value)
    if text is not None:
        el.text = text
    return el


def el(tag: str, text: str | None = None, nsmap: dict[str, str] | None = None, **attrs: str) -> Element:
    node = etree.Element(tag, nsmap=nsmap)
    for key, value in attrs.items():
        node.set(key, value)
    if text is not None:
        node.text = text
    return node


def find(elem: Element, tag: str) -> Element | None:
    return elem.find(tag)


def text_of(elem: Element, tag: str) -> str | None:
    child = elem.find(tag)
    if child is None:
        return None
    return child.text or ""


def children(elem: Element) -> list[Element]:
    return [c for c in elem if isinstance(c.tag, str)]


def bool_text(value: bool) -> str:
    return "true" if value else "false"


def parse_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


def fmt_dt(value: dt.datetime) -> str:
    """Format an aware datetime the way Exchange does: UTC with a trailing Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_dt(value: str, default_tz: dt.tzinfo | None = None) -> dt.datetime:
    """Parse an xs:dateTime. Naive values are taken in default_tz (the request's TimeZoneContext) or UTC."""
    raw = value.strip()
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"invalid xs:dateTime value {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=default_tz or UTC)
    return parsed.astimezone(UTC).replace(microsecond=0)


def parse_date(value: str) -> dt.date:
    """Parse an xs:date that may carry a zone suffix ('2024-01-01', '2024-01-01Z', '2024-01-01+01:00')."""
    raw = value.strip()
    try:
        return dt.date.fromisoformat(raw[:10])
    except ValueError as exc:
        raise ValueError(f"invalid xs:date value {value!r}") from exc


def to_bytes(elem: Element, declaration: bool = True) -> bytes:
    return etree.tostring(elem, xml_declaration=declaration, encoding="utf-8")
