"""A cap on the size of a request's head (request line + headers) for uvicorn's httptools parser.

uvicorn's h11 parser refuses a head over 16 KiB, but its httptools parser (the fast one, which
``nscompile serve`` uses when httptools is installed) buffers a head of any size: one client
sending an endless header line grew the server by 400 MB (200 MB sent). This protocol counts
the bytes of a head still incomplete and answers 431 past :data:`MAX_HEAD_BYTES`, as h11 does.
"""

from __future__ import annotations

import json

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn uses h11, which enforces the same cap itself
    HttpToolsProtocol = None

#: Largest request line + headers accepted: h11's default, and more than any KServe client sends.
MAX_HEAD_BYTES = 16 << 10


def http_protocol() -> str | type:
    """The ``http`` option for uvicorn: the bounded httptools protocol, or "h11" without httptools."""
    return "h11" if HttpToolsProtocol is None else BoundedHttpToolsProtocol


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, refusing heads over MAX_HEAD_BYTES with 431.

        A module-level class, so that uvicorn's worker processes can unpickle it.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._in_head, self._head_bytes, self._heads = True, 0, 0

        def data_received(self, data: bytes) -> None:
            heads, in_head = self._heads, self._in_head
            super().data_received(data)
            if self._heads != heads:  # a head ended in this chunk: whatever follows starts afresh
                self._head_bytes = 0
            elif in_head and self._in_head and not self.transport.is_closing():  # all of this chunk was head
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse()

        def on_headers_complete(self) -> None:
            self._in_head, self._heads = False, self._heads + 1
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True  # a keep-alive connection's next request

        def _refuse(self) -> None:
            body = json.dumps({"error": f"the request line and headers are over {MAX_HEAD_BYTES} bytes; "
                                        "send shorter headers"}).encode()
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()
