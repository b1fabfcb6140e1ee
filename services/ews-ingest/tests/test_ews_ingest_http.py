"""ews_ingest.exchange.http over a real socket: a body already read reaches the parser in one piece, a streamed
body (as GetStreamingEvents is) still arrives as its bytes do, and ews-ingest's protocols use these adapters."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ews_ingest.exchange.auth import IngestProtocol, NoVerifyIngestProtocol
from ews_ingest.exchange.http import IngestHTTPAdapter, InMemoryBodyResponse, NoVerifyIngestHTTPAdapter

BODY = b"<soap>" + b"x" * 200_000 + b"</soap>"
SECOND_CHUNK_MAY_GO = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/whole":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
            return
        self.send_response(200)  # /stream: two HTTP chunks, the second only once the client has seen the first
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b"first", b"second"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
            SECOND_CHUNK_MAY_GO.wait(10)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("adapter", [IngestHTTPAdapter, NoVerifyIngestHTTPAdapter])
def test_a_body_already_read_is_one_chunk(server: str, adapter: type[requests.adapters.HTTPAdapter]) -> None:
    with requests.Session() as session:
        session.mount("http://", adapter())
        response = session.get(f"{server}/whole")
        assert isinstance(response, InMemoryBodyResponse)
        assert [len(c) for c in response.iter_content()] == [len(BODY)]  # exchangelib's call: default chunk size
        assert b"".join(response.iter_content(4096)) == BODY and len(list(response.iter_content(4096))) > 1
    with requests.Session() as plain:  # what exchangelib's own adapter does with the same body
        assert len(list(plain.get(f"{server}/whole").iter_content())) == len(BODY)


def test_a_streamed_body_still_arrives_as_its_bytes_do(server: str) -> None:
    SECOND_CHUNK_MAY_GO.clear()
    with requests.Session() as session:
        session.mount("http://", IngestHTTPAdapter())
        response = session.get(f"{server}/stream", stream=True)
        chunks = response.iter_content()
        seen = b"".join(next(chunks) for _ in range(5))  # before the server sent the second chunk
        assert seen == b"first"
        SECOND_CHUNK_MAY_GO.set()
        assert seen + b"".join(chunks) == b"firstsecond"


def test_the_ingest_protocols_use_them() -> None:
    assert isinstance(IngestProtocol.get_adapter(), IngestHTTPAdapter)
    assert isinstance(NoVerifyIngestProtocol.get_adapter(), NoVerifyIngestHTTPAdapter)
