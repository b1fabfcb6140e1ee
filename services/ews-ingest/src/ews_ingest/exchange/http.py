"""HTTP adapters for exchangelib whose responses hand a body already in memory to the XML parser in one piece.

exchangelib parses every SOAP answer from `response.iter_content()`, whose default chunk size is one byte: for a
request that was not streamed the body is already in memory, and it is then fed to lxml a byte at a time through
Python (about a sixth of ews-ingest's CPU during an initial sync, bench/README.md). These adapters build responses
that, for such a body, yield it as one chunk; a streamed body (GetStreamingEvents) is read exactly as before, as its
bytes arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests
from exchangelib.protocol import NoVerifyHTTPAdapter


class InMemoryBodyResponse(requests.Response):
    """A response whose `iter_content()` of a body already read yields it whole."""

    def iter_content(self, chunk_size: int | None = 1, decode_unicode: bool = False) -> Iterator[Any]:
        if self._content_consumed and isinstance(self._content, bytes) and chunk_size == 1:
            chunk_size = None  # requests: a consumed body as a single chunk
        return super().iter_content(chunk_size, decode_unicode=decode_unicode)  # type: ignore[call-overload,no-any-return]


def _in_memory_body(response: requests.Response) -> requests.Response:
    response.__class__ = InMemoryBodyResponse
    return response


class IngestHTTPAdapter(requests.adapters.HTTPAdapter):
    def build_response(self, req: Any, resp: Any) -> requests.Response:
        return _in_memory_body(super().build_response(req, resp))


class NoVerifyIngestHTTPAdapter(NoVerifyHTTPAdapter):  # type: ignore[misc]  # exchangelib is untyped
    """The same without TLS certificate verification (calendarProviders[].verifyTls = false)."""

    def build_response(self, req: Any, resp: Any) -> requests.Response:
        return _in_memory_body(super().build_response(req, resp))
