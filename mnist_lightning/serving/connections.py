"""The socket side of ``mnist-lightning serve``: each request read whole, within one deadline, before the app sees it.

Werkzeug's development server reads the body while the app runs, with a per-``recv`` timeout only: a client that
stalls mid-body, sends a byte every few seconds, or declares more bytes than it sends held a thread for 30 s and
ended in a traceback in the log (``cannot read from timed out object``). Here :class:`RequestHandler` reads the
request line, the headers and the whole body itself, all before one deadline (``--request_timeout``), checks how
the body is framed (``Content-Length`` or ``Transfer-Encoding: chunked``), and only then hands the app a complete
body in memory. Every fault of the client ends the same way: a 4xx with ``{"error": "..."}`` if the client can still
read it, and exactly one line on :data:`LOG`, never a traceback:

- 400 a malformed request line, ``Content-Length`` not a number or given twice with different values, both framings
  at once, a transfer coding other than chunked, a malformed chunk, a body that ended before its length;
- 408 the request (line, headers and body) not complete within the deadline: a stalled or trickling client;
- 411 a POST, PUT or PATCH with neither ``Content-Length`` nor chunked framing;
- 413 a body over the size limit (refused from ``Content-Length`` before it is read);
- 414 a request line over 64 kB, 431 too many or too long headers;
- a client that closes or resets the connection (before or while it is answered) gets one line in the log.
"""

from __future__ import annotations

import io
import json
import logging
import re
import selectors
import socket
import time
from typing import Any

from werkzeug.serving import WSGIRequestHandler

LOG = logging.getLogger("mnist_lightning.serving.clients")  # one line per client fault (Flask logs bugs)
REQUEST_TIMEOUT_S = 5.0  # the whole request (line, headers, body) must arrive within this; the page's take ~ms
MAX_LINE = 65536  # request line, header line or chunk-size line (http.server's own limit for the first two)
DRAIN_LIMIT = 64 * 2**20  # after refusing a body, bytes still read and dropped so the client sees the answer
BODY_METHODS = ("POST", "PUT", "PATCH")  # methods whose request carries a body: these need its length
CONTROL = str.maketrans({c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]})


class ClientFault(Exception):
    """A request the server will not take: its status and what to tell the client (and the log)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def printable(text: object, limit: int = 300) -> str:
    """Text that came from a client, safe for one log line: control characters escaped, length capped."""
    escaped = str(text).translate(CONTROL)
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def log_fault(client: str, request: str, status: int | str, message: str) -> None:
    """The one line a client's fault leaves in the server's log."""
    LOG.warning("%s %s -> %s: %s", printable(client), printable(request, 120), status, printable(message))


class DeadlineReader:
    """The bytes of one connection, read with one deadline for all of them (http.server's ``rfile``).

    ``readline`` and ``read`` raise TimeoutError once the deadline has passed, however the client spreads its bytes
    out; ``read(n)`` returns what is there (at least one byte, b"" at the end), like a socket.
    """

    def __init__(self, connection: socket.socket, seconds: float) -> None:
        self.connection, self.seconds = connection, seconds
        self.deadline = time.monotonic() + seconds
        self.buffer = bytearray()
        self.received = 0  # bytes from the client so far
        self.ended = False  # the client closed its side
        self.draining = False  # the request is complete: what follows is read only to be dropped, never past the end

    def fill(self) -> bool:
        """Receive more bytes before the deadline; False at the end of the stream."""
        if self.ended:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            if self.draining:
                return False
            raise TimeoutError("request deadline passed")
        self.connection.settimeout(remaining)
        data = self.connection.recv(65536)
        self.ended = not data
        self.buffer += data
        self.received += len(data)
        return bool(data)

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def readline(self, limit: int = -1) -> bytes:
        limit = limit if limit is not None and limit >= 0 else 1 << 62
        while True:
            end = self.buffer.find(b"\n", 0, limit)
            if end >= 0:
                return self.take(end + 1)
            if len(self.buffer) >= limit or not self.fill():
                return self.take(limit)

    def read(self, size: int = -1) -> bytes:
        if not self.buffer:
            self.fill()
        return self.take(size if size is not None and size >= 0 else len(self.buffer))

    def read_exactly(self, size: int, what: str) -> bytes:
        """``size`` bytes; ClientFault(400) when the stream ends first (the client half-closed: it may still read)."""
        while len(self.buffer) < size:
            if not self.fill():
                got = len(self.buffer)
                raise ClientFault(400, f"{what} ended after {got} of its {size} bytes; send all the bytes announced")
        return self.take(size)

    def close(self) -> None:
        self.buffer.clear()


def declared_length(headers: Any, limit: int) -> int | None:
    """The body's length from the framing headers; None for a chunked body.

    Raises:
        ClientFault: framing that is ambiguous, malformed or not supported (400), or a length over ``limit`` (413).
    """
    codings = [c.strip().lower() for v in headers.get_all("Transfer-Encoding") or [] for c in v.split(",")]
    lengths = {v.strip() for value in headers.get_all("Content-Length") or [] for v in value.split(",")}
    if codings:
        if codings != ["chunked"]:
            raise ClientFault(400, f"Transfer-Encoding {', '.join(codings)} is not supported; send a Content-Length")
        if lengths:
            raise ClientFault(400, "both Transfer-Encoding and Content-Length are set; send only a Content-Length")
        return None
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise ClientFault(400, f"Content-Length is given more than once ({', '.join(sorted(lengths))}); send one")
    text = lengths.pop()
    if not re.fullmatch(r"[0-9]+", text):
        raise ClientFault(400, f"Content-Length {text!r} is not a number of bytes; send the body's length in bytes")
    if len(text) > 18 or int(text) > limit:  # 18 digits: no need to build a huge int to know it is too large
        raise ClientFault(413, over_limit(limit))
    return int(text)


def over_limit(limit: int) -> str:
    size = f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit} bytes"
    return f"the body is over {size}; send one image of a digit (the drawing page sends about 10 kB)"


def read_chunked(reader: DeadlineReader, limit: int) -> bytes:
    """A ``Transfer-Encoding: chunked`` body, at most ``limit`` bytes (trailers read and dropped)."""
    body = bytearray()
    while True:
        line = reader.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            if len(line) >= MAX_LINE:
                raise ClientFault(400, "a chunk-size line is over 64 kB; send chunks as hexadecimal size, CRLF, data")
            raise ClientFault(400, "the chunked body ended before its last (zero-size) chunk; send all the chunks")
        size_text = line.split(b";", 1)[0].strip()
        if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
            shown = size_text[:20].decode("latin-1")
            raise ClientFault(400, f"chunk size {shown!r} is not hexadecimal; send chunks as size, CRLF, data, CRLF")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise ClientFault(413, over_limit(limit))
        body += reader.read_exactly(size, "a chunk")
        if reader.readline(MAX_LINE).strip():
            raise ClientFault(400, "a chunk is longer than its size says; send chunks as size, CRLF, data, CRLF")
    while reader.readline(MAX_LINE).strip():  # trailer fields, up to the empty line
        pass
    return bytes(body)


class RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler, reading each request whole before one deadline and answering faults as one-line JSON.

    The server (``start_server``) sets ``request_timeout`` and ``max_body`` on itself; ``advice`` (set by a
    subclass) ends the message of a request too malformed to reach the app.
    """

    advice = ""
    body = b""

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # type: ignore[attr-defined]  # writes: see run_wsgi
        super().setup()
        self.rfile.close()  # http.server's buffered reader: replaced by one with a deadline for the whole request
        self.rfile = self.reader = DeadlineReader(self.connection, self.timeout)  # type: ignore[assignment]
        self.requestline, self.command, self.path, self.headers = "", "", "", None  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        try:
            self.answer_one_request()
        finally:
            self.close_connection = True  # one request per connection (werkzeug answers with Connection: close)

    def answer_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
            if not self.raw_requestline:
                return  # closed without a request (a browser's spare connection)
            self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")  # for the log, if it stalls
            if len(self.raw_requestline) > MAX_LINE:
                raise ClientFault(414, "the request line is over 64 kB; send a shorter URL")
            if not self.parse_request():  # it answered itself through send_error
                return
            self.body = self.read_body()
        except ClientFault as fault:
            self.refuse(fault.status, fault.message)
            return
        except TimeoutError:
            self.refuse(408, self.timeout_message())
            return
        except OSError as err:  # ConnectionResetError, mostly
            self.log_error("the client closed the connection (%s)", self.gone(err))
            return
        self.reader.draining = True
        self.connection.settimeout(self.timeout)  # writing the answer: a client that never reads it is dropped
        self.run_wsgi()  # werkzeug's: the app, with self.body as its input (make_environ)

    def read_body(self) -> bytes:
        length = declared_length(self.headers, self.server.max_body)  # type: ignore[attr-defined]
        if length == 0 and self.command in BODY_METHODS and not self.headers.get("Content-Length"):
            raise ClientFault(411, f"a {self.command} needs a Content-Length header; send the body's length in bytes")
        if self.headers.get("Expect", "").strip().lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # only now that the framing is acceptable
            del self.headers["Expect"]  # werkzeug would send a second one
        if length is None:
            return read_chunked(self.reader, self.server.max_body)  # type: ignore[attr-defined]
        return self.reader.read_exactly(length, "the body")

    def handle_expect_100(self) -> bool:
        return True  # answered in read_body, after the framing checks: no 100 Continue before a 413

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ.pop("wsgi.input_terminated", None)
        environ["wsgi.input"] = io.BytesIO(self.body)
        environ["CONTENT_LENGTH"] = str(len(self.body))
        return environ

    def timeout_message(self) -> str:
        seconds = f"{self.reader.seconds:g} s"
        if not self.reader.received:
            return f"no request arrived within {seconds} of connecting; send the request at once"
        if self.headers is None:  # the request line or the headers were not complete
            return f"the request's headers did not arrive within {seconds}; send the headers and the body at once"
        announced = (self.headers.get("Content-Length") or "").strip()
        if announced:
            return (
                f"the body did not arrive within {seconds} (Content-Length said {announced} bytes); "
                "send as many bytes as Content-Length says"
            )
        return f"the chunked body did not arrive within {seconds}; send every chunk and the last, zero-size one"

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's error page (a malformed request line, too many headers, ...): as a JSON fault."""
        message = message or self.responses.get(code, ("error",))[0]
        self.refuse(code, f"{message}; {self.advice}" if self.advice else message)

    def refuse(self, status: int, message: str) -> None:
        """Log one line, answer ``{"error": message}`` with ``status`` if the client still reads, then close."""
        log_fault(self.client_ip(), self.request_text(), status, message)
        body = json.dumps({"error": message}).encode()
        reason = self.responses.get(status, ("",))[0]
        head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        try:
            self.connection.settimeout(self.reader.seconds)
            self.wfile.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
            self.drain()
        except OSError:
            pass  # the client is gone: the line above says what it did
        self.close_connection = True

    def drain(self) -> None:
        """Read and drop what the client is still sending (briefly), so it reads the answer rather than a reset."""
        received, deadline = 0, time.monotonic() + self.reader.seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self.connection, selectors.EVENT_READ)
            while received < DRAIN_LIMIT and time.monotonic() < deadline and selector.select(timeout=0.05):
                data = self.connection.recv(2**20)
                if not data:
                    return
                received += len(data)

    def connection_dropped(self, error: BaseException, environ: dict[str, Any] | None = None) -> None:
        """The client went away (or stopped reading) while it was being answered: one line."""
        self.log_error("the client left before the answer (%s)", self.gone(error))

    def log_error(self, format: str, *args: Any) -> None:
        log_fault(self.client_ip(), self.request_text(), "-", format % args)

    def client_ip(self) -> str:
        return str(self.client_address[0]) if self.client_address else "<local>"

    def request_text(self) -> str:
        if self.command and self.path:
            return f"{self.command} {self.path}"
        return self.requestline.strip() or "(no request line)"

    @staticmethod
    def gone(err: BaseException) -> str:
        if isinstance(err, TimeoutError):
            return "it stopped reading"
        return type(err).__name__ if isinstance(err, OSError) else "closed early"
