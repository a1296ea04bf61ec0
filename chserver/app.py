"""The Starlette application speaking ClickHouse's HTTP interface (https://clickhouse.com/docs/interfaces/http).

* ``GET /ping``, ``GET /`` (no query), ``GET /replicas_status``: ``Ok.``
* the query in the ``query`` URL parameter and/or the body (POST: URL query, newline, body, as ClickHouse
  concatenates them); ``INSERT ... FORMAT <fmt>`` followed by data in any input format chDB reads (Native,
  RowBinary[WithNamesAndTypes], Arrow, ArrowStream, Parquet, CSV[WithNames], TSV, JSONEachRow, Values, ...);
* URL parameters ``database``, ``default_format`` (or the headers ``X-ClickHouse-Database`` / ``-Format``, which win
  over them, as on a server), ``query_id``, ``session_id`` (accepted; settings never outlive
  a request), ``param_<name>`` (``{name:Type}`` placeholders, bound by the engine), ``user``/``password``, and
  every other parameter as a query setting for that request only (an unknown one: code 115 UNKNOWN_SETTING);
* headers ``X-ClickHouse-Format``, ``X-ClickHouse-Timezone``, ``X-ClickHouse-Query-Id``,
  ``X-ClickHouse-Summary``, ``X-ClickHouse-Server-Display-Name``; HTTP compression both ways: request bodies in
  gzip, deflate, zstd or lz4 (``Content-Encoding``; bounded while decompressing), responses compressed per
  ``Accept-Encoding`` (a method with ``q=0`` is refused) when ``enable_http_compression`` is ``1``/``true``;
* authentication as ClickHouse does it: basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``, or
  ``user``/``password`` parameters; users from settings (``admin``, ``platform_writer``, read-only
  ``bi_reader``), no passwordless ``default`` user; wrong credentials: 516 AUTHENTICATION_FAILED (403);
* errors as a server returns them: the status ClickHouse maps the code to, header
  ``X-ClickHouse-Exception-Code``, body ``Code: N. DB::Exception: ... (NAME) (version ...)``; never a traceback.

GET requests run with ``readonly=2`` (as ClickHouse); ``bi_reader`` always with ``readonly=1``.
Refused as a server refuses them over HTTP (:func:`chserver.sqlscan.check_statement`, before the engine):
multi-statement bodies (400, code 62: one statement per request; one trailing ``;`` is fine), ``INTO OUTFILE`` /
``FROM INFILE`` (500, code 358), and for every user but ``admin`` the functions, engines and sources that reach
the server's files, other hosts or processes (``file()``, ``url()``, ``s3()``, ``remote()``, ``ENGINE = File``,
...: 403, code 497; chDB, being clickhouse-local, does not confine ``file()`` to a ``user_files_path``).
Not supported (clear error): ClickHouse's native ``compress=1``/``decompress=1`` block compression.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hmac
import json
import logging
import re
import uuid
import zlib
from typing import Iterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from chserver.engine import ClickHouseError, Engine, Result
from chserver.sqlscan import check_statement, output_format
from core.settings import Settings, get_settings

log = logging.getLogger("chserver")

#: seconds a request body may pause before the request is refused (ClickHouse's ``http_receive_timeout`` default)
RECEIVE_TIMEOUT_S = 30.0
#: results up to this size are sent as one body; larger ones are streamed from the engine's spool in blocks
STREAM_FROM = 1 << 20
#: URL parameters that are part of the HTTP protocol, not query settings
TRANSPORT_PARAMS = {"query", "database", "default_format", "query_id", "session_id", "session_timeout",
                    "session_check", "user", "password", "quota_key", "compress", "decompress", "buffer_size",
                    "wait_end_of_query", "enable_http_compression", "send_progress_in_http_headers",
                    "http_headers_progress_interval_ms", "client_protocol_version", "role", "stacktrace",
                    "close_session", "http_zlib_compression_level", "extremes", "http_receive_timeout"}
#: ClickHouse error names -> HTTP status (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp)
_BAD_REQUEST = {"BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
                "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
                "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
                "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
                "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
                "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
                "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", "UNKNOWN_COMPRESSION_METHOD", "CANNOT_DECOMPRESS"}
_NOT_FOUND = {"UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
              "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
              "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"}
_FORBIDDEN = {"UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"}
_CONTENT_TYPES = {"tabseparated": "text/tab-separated-values; charset=UTF-8", "tsv": "text/tab-separated-values; charset=UTF-8",
                  "csv": "text/csv; charset=UTF-8; header=absent", "csvwithnames": "text/csv; charset=UTF-8; header=present",
                  "json": "application/json; charset=UTF-8", "jsoncompact": "application/json; charset=UTF-8",
                  "jsoneachrow": "application/x-ndjson; charset=UTF-8", "xml": "application/xml; charset=UTF-8",
                  "pretty": "text/plain; charset=UTF-8", "prettycompact": "text/plain; charset=UTF-8"}
#: prefixes of the other text output formats (TSV/CSV/JSON variants, Pretty*, Vertical, Markdown, XML)
_TEXT_PREFIXES = ("tsv", "tabseparated", "csv", "json", "pretty", "vertical", "markdown", "xml")
#: ``INSERT INTO <table> [(columns)] [SETTINGS ...] FORMAT <name>`` and the data after it: the FORMAT clause only
#: where ClickHouse's grammar puts it (a word "format" in a VALUES string or a SELECT is no clause)
_INSERT_RE = re.compile(rb"^\s*(INSERT\s+INTO\s+(?:TABLE\s+)?(?:`[^`]+`|[\w.]+)(?:\.(?:`[^`]+`|\w+))?\s*"
                        rb"(?:\([^)]*\))?(?:\s*SETTINGS\s+[^()'\n]*?)?)\s+FORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n)?",
                        re.I | re.S)


def http_status(err: ClickHouseError) -> int:
    """The HTTP status a ClickHouse server answers for an error (by the error's name)."""
    if err.name == "REQUIRED_PASSWORD":
        return 401
    if err.name in _FORBIDDEN:
        return 403
    if err.name in _BAD_REQUEST:
        return 400
    if err.name in _NOT_FOUND:
        return 404
    return {"QUERY_IS_TOO_LARGE": 413, "NOT_IMPLEMENTED": 501, "TIMEOUT_EXCEEDED": 408,
            "SOCKET_TIMEOUT": 408}.get(err.name, 500)


def content_type(fmt: str) -> str:
    """The Content-Type of a response in output format ``fmt``: the server's for the common formats, plain text
    for other text formats, ``application/octet-stream`` for binary ones (Native, RowBinary, Arrow, Parquet...)."""
    f = fmt.lower()
    if f in _CONTENT_TYPES:
        return _CONTENT_TYPES[f]
    return "text/plain; charset=UTF-8" if f.startswith(_TEXT_PREFIXES) else "application/octet-stream"


def too_large(what: str) -> ClickHouseError:
    """QUERY_IS_TOO_LARGE (202, HTTP 413) for a request body over CLICKHOUSE_MAX_BODY_MB; ``what`` says which."""
    return ClickHouseError(202, f"Code: 202. DB::Exception: {what} exceeds CLICKHOUSE_MAX_BODY_MB. "
                                "(QUERY_IS_TOO_LARGE)", "QUERY_IS_TOO_LARGE")


def _inflate(body: bytes, wbits: int, limit: int | None, members: bool) -> bytes:
    """zlib/gzip data -> bytes, producing at most ``limit`` + 1 bytes before giving up (a 10 MB gzip body can
    expand to 10 GB: never held). ``members``: concatenated gzip members, as ``gzip.decompress`` reads them."""
    out: list[bytes] = []
    size, rest = 0, body
    while True:
        d = zlib.decompressobj(wbits)
        chunk = d.decompress(rest, 0 if limit is None else limit + 1 - size)
        size += len(chunk)
        out.append(chunk)
        if limit is not None and size > limit:
            raise too_large("Decompressed request body")
        if not d.eof:
            raise ValueError("compressed data ended before the end-of-stream marker")
        rest = d.unused_data
        if not rest.strip(b"\0"):       # zero padding after the last stream is ignored
            return b"".join(out)
        if not members:
            raise ValueError(f"{len(rest)} bytes of trailing data after the compressed stream")


#: the most a zstd frame expands per input byte: a 4-byte RLE block (3-byte header + 1 byte) gives 128 KiB
ZSTD_MAX_RATIO = 1 << 15


def _unzstd(body: bytes, cap: int | None) -> bytes:
    """Concatenated zstd frames -> bytes in one pass, stopping once ``cap`` bytes are produced (None: no bound).

    zstandard's ``decompressobj`` has no output bound, so the input is fed in slices no larger than
    (``cap`` - output so far) / :data:`ZSTD_MAX_RATIO` bytes (at least 64): one slice never expands past the bound
    by more than 2 MiB. Each frame must end (``eof``): a truncated one is an error, not a short body. Until
    2026-12-06 the body was decompressed twice (a bounded ``stream_reader``, which stops silently at a truncated
    frame, then every frame again to check it ends: 2x the work, both outputs held).

    Raises:
        ClickHouseError: 202 QUERY_IS_TOO_LARGE once the output reaches ``cap``.
        ValueError: a truncated frame; zstandard.ZstdError: corrupt data.
    """
    import zstandard

    if not body:
        return b""
    dctx = zstandard.ZstdDecompressor()
    d, out, size, pos, view = dctx.decompressobj(), [], 0, 0, memoryview(body)
    while pos < len(body):
        step = len(body) if cap is None else max(64, (cap - size) // ZSTD_MAX_RATIO)
        piece = view[pos:pos + step]
        pos += len(piece)
        chunk = d.decompress(piece)
        size += len(chunk)
        out.append(chunk)
        if cap is not None and size >= cap:
            raise too_large("Decompressed request body")
        if d.eof:   # a frame ended inside this slice: the next frame starts at its unused data
            pos -= len(d.unused_data)
            if pos < len(body):
                d = dctx.decompressobj()
    if not d.eof:
        raise ValueError("truncated zstd frame")
    return b"".join(out)


def decompress(body: bytes, encoding: str, limit: int | None = None) -> bytes:
    """Undo a request's ``Content-Encoding`` (gzip, deflate, zstd, lz4 = LZ4 frames; identity), producing at most
    ``limit`` bytes (None: no bound). The bound holds while decompressing: a small body that would expand past it
    (a decompression bomb) is refused after ``limit`` + 1 bytes, never expanded in memory.

    Raises:
        ClickHouseError: unknown method (55 UNKNOWN_COMPRESSION_METHOD), corrupt or truncated data
            (271 CANNOT_DECOMPRESS), output over ``limit`` (202 QUERY_IS_TOO_LARGE).
    """
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        return body
    cap = None if limit is None else limit + 1
    try:
        if enc in ("gzip", "x-gzip"):
            return _inflate(body, 16 + zlib.MAX_WBITS, limit, members=True)
        if enc == "deflate":
            return _inflate(body, zlib.MAX_WBITS, limit, members=False)
        if enc == "zstd":  # clients send one frame per block: read across all frames
            return _unzstd(body, cap)
        if enc in ("lz4", "lz4_frame"):  # concatenated LZ4 frames (clickhouse-connect: one per block)
            import lz4.frame

            out, size, rest = [], 0, body
            while rest:
                d = lz4.frame.LZ4FrameDecompressor()
                chunk = d.decompress(rest, max_length=-1 if cap is None else cap - size)
                size += len(chunk)
                out.append(chunk)
                if cap is not None and size >= cap:
                    raise too_large("Decompressed request body")
                if not d.eof:
                    raise ValueError("truncated LZ4 frame")
                rest = d.unused_data
            return b"".join(out)
    except ClickHouseError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt input is the client's error
        raise ClickHouseError(271, f"Code: 271. DB::Exception: Cannot decompress {enc} request body: {exc}. "
                                   "(CANNOT_DECOMPRESS)", "CANNOT_DECOMPRESS") from None
    raise ClickHouseError(55, f"Code: 55. DB::Exception: Unknown HTTP compression method: {enc}. "
                              "(UNKNOWN_COMPRESSION_METHOD)", "UNKNOWN_COMPRESSION_METHOD")


async def read_body(request: Request, limit: int, timeout: float = RECEIVE_TIMEOUT_S) -> bytes:
    """The raw request body, read as it streams in and refused once over ``limit`` bytes (``Content-Length`` is
    checked first; a chunked body without one is bounded the same way), or once the client sends nothing for
    ``timeout`` seconds (ClickHouse's ``http_receive_timeout``; until 2026-12-06 a client that announced a body and
    stopped sending held its connection for good: still open after 90 s).

    Raises:
        ClickHouseError: 202 QUERY_IS_TOO_LARGE; 209 SOCKET_TIMEOUT (HTTP 408).
        starlette.requests.ClientDisconnect: the client went away while sending.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise too_large(f"Request body of {length} bytes")
    chunks, size = [], 0
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), timeout)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ClickHouseError(209, f"Code: 209. DB::Exception: Timeout exceeded while reading from socket: no "
                                       f"request body data for {timeout:g} s (http_receive_timeout), {size} bytes "
                                       "received. (SOCKET_TIMEOUT)", "SOCKET_TIMEOUT") from None
        size += len(chunk)
        if size > limit:
            raise too_large(f"Request body of more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def receive_timeout(q) -> float:
    """Seconds a request body may pause (:func:`read_body`): the ``http_receive_timeout`` URL parameter (ClickHouse's
    setting of its HTTP layer, so not passed on to the engine) or :data:`RECEIVE_TIMEOUT_S`.

    Raises:
        ClickHouseError: 36 BAD_ARGUMENTS, the parameter is not a positive number of seconds.
    """
    raw = q.get("http_receive_timeout")
    if raw is None:
        return RECEIVE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ClickHouseError(36, f"Code: 36. DB::Exception: http_receive_timeout={raw!r} is not a positive number "
                                  "of seconds. (BAD_ARGUMENTS)", "BAD_ARGUMENTS")
    return value


def invalid_utf8_param(query_string: bytes) -> str | None:
    """The name of the first URL parameter whose name or value is not UTF-8 once percent-decoded (``%FF``), or
    None. ``query_string``: the raw query string (ASGI ``scope["query_string"]``); ``+`` counts as a space."""
    from urllib.parse import unquote_to_bytes

    for pair in query_string.split(b"&"):
        key, _, value = pair.partition(b"=")
        raw_key = unquote_to_bytes(key.replace(b"+", b" "))
        try:
            raw_key.decode("utf-8")
            unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            return raw_key.decode("utf-8", "backslashreplace")
    return None


def _true(value: str) -> bool:
    """A ClickHouse boolean setting's value as text: ``1``/``true`` (any case) is true; ``0``, ``false``, anything
    else false."""
    return value.strip().lower() in ("1", "true")


def _q(params: str) -> float:
    """The ``q`` weight of an ``Accept-Encoding`` item's parameters (``;q=0.5``): 1 without one, 0 if malformed."""
    for p in params.split(";"):
        k, _, v = p.partition("=")
        if k.strip().lower() == "q":
            try:
                return float(v)
            except ValueError:
                return 0.0
    return 1.0


def encoding_for(accept: str) -> str | None:
    """The response encoding for an ``Accept-Encoding`` header: its first method we support (gzip, deflate, zstd,
    lz4) whose weight is not ``q=0`` (``gzip;q=0`` refuses gzip); None: send it uncompressed."""
    for item in (accept or "").split(","):
        enc, _, params = item.partition(";")
        enc = enc.strip().lower()
        if _q(params) > 0 and enc in ("gzip", "x-gzip", "deflate", "zstd", "lz4"):
            return "gzip" if enc == "x-gzip" else enc
    return None


def compressor(enc: str):
    """A streaming compressor for ``enc`` (gzip, deflate, zstd, lz4; level 3 where there are levels): an object
    with ``compress(bytes) -> bytes`` and ``flush() -> bytes``, whose outputs joined are one compressed stream."""
    if enc == "gzip":
        return zlib.compressobj(3, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.compressobj(3)
    if enc == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compressobj()
    if enc == "lz4":
        import lz4.frame

        class _Lz4:
            def __init__(self):
                self.c, self.begun = lz4.frame.LZ4FrameCompressor(), False

            def compress(self, data: bytes) -> bytes:
                head = b"" if self.begun else self.c.begin()
                self.begun = True
                return head + self.c.compress(data)

            def flush(self) -> bytes:
                return (b"" if self.begun else self.c.begin()) + self.c.flush()

        return _Lz4()
    raise ValueError(f"unsupported response encoding {enc!r}")


def compress(data: bytes, enc: str) -> bytes:
    """``data`` compressed whole with ``enc`` (:func:`compressor`)."""
    c = compressor(enc)
    return c.compress(data) + c.flush()


def _body(res: Result, enc: str | None) -> Iterator[bytes]:
    """A large result's body in blocks of 1 MiB, compressed with ``enc`` as it goes; the result is closed at the
    end or when the client goes away."""
    c = compressor(enc) if enc else None
    try:
        for block in res.blocks():
            out = c.compress(block) if c else block
            if out:
                yield out
        if c and (tail := c.flush()):
            yield tail
    finally:
        res.close()


class Server:
    """Request handling over one :class:`Engine`; users from :meth:`Settings.clickhouse_users`."""

    def __init__(self, settings: Settings, engine: Engine):
        self.s = settings
        self.engine = engine
        self.users = settings.clickhouse_users()
        self.max_body = settings.clickhouse_max_body_mb * 1024 * 1024

    # ------------------------------------------------------------------------------------ helpers --
    def error(self, err: ClickHouseError, query_id: str) -> Response:
        """The HTTP response of a failed request, as a ClickHouse server sends it.

        Body: ``err.message`` (`` (version <chDB version> (chDB))`` appended when it names no version) ending in
        one newline, ``text/plain``; status :func:`http_status` of the error's name (e.g. 400 SYNTAX_ERROR, 403
        AUTHENTICATION_FAILED, 404 UNKNOWN_TABLE, 500 otherwise); headers ``X-ClickHouse-Exception-Code`` (the
        numeric code), ``X-ClickHouse-Query-Id`` (``query_id``), ``X-ClickHouse-Timezone`` and
        ``X-ClickHouse-Server-Display-Name``. Never raises for a well-formed ``err``.
        """
        msg = err.message if "(version" in err.message else f"{err.message} (version {self.engine.version} (chDB))"
        return Response(msg.rstrip("\n") + "\n", status_code=http_status(err), media_type="text/plain; charset=UTF-8",
                        headers={"X-ClickHouse-Exception-Code": str(err.code), "X-ClickHouse-Query-Id": query_id,
                                 "X-ClickHouse-Timezone": self.engine.timezone,
                                 "X-ClickHouse-Server-Display-Name": "chserver"})

    def authenticate(self, request: Request) -> tuple[str, bool]:
        """(user, readonly) of the request.

        Raises:
            ClickHouseError: 516 AUTHENTICATION_FAILED for no, unknown or wrong credentials.
        """
        q = request.query_params
        user = password = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
            except Exception:  # noqa: BLE001 - a malformed header is a failed login
                user, password = "", ""
        if request.headers.get("x-clickhouse-user") is not None:
            user, password = request.headers.get("x-clickhouse-user"), request.headers.get("x-clickhouse-key", "")
        if "user" in q:
            user, password = q.get("user"), q.get("password", "")
        user = user or "default"
        known = self.users.get(user)
        if not known or not known[0] or not hmac.compare_digest((password or "").encode(), known[0].encode()):
            raise ClickHouseError(516, f"Code: 516. DB::Exception: {user}: Authentication failed: password is "
                                       "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)",
                                  "AUTHENTICATION_FAILED")
        return user, known[1]

    # ------------------------------------------------------------------------------------- routes --
    async def ping(self, request: Request) -> Response:
        """``GET``/``HEAD /ping`` and ``GET /replicas_status``: ``Ok.`` + newline, status 200, ``text/plain``.
        No authentication and no engine call (a liveness probe, as ClickHouse's)."""
        return Response("Ok.\n", media_type="text/plain; charset=UTF-8")

    async def query(self, request: Request) -> Response:
        """``GET``/``POST`` on ``/`` and ``/query``: run one statement (ClickHouse HTTP interface,
        https://clickhouse.com/docs/interfaces/http).

        * ``GET`` without a ``query`` parameter: ``Ok.`` (200), no authentication (as ClickHouse).
        * The statement: the ``query`` URL parameter, and for ``POST`` the body appended after a newline (body only
          when there is no parameter; a ``GET``'s body is ignored). ``INSERT ... FORMAT <fmt>`` followed by data:
          the data (the rest of the text) is handed to the engine in that input format. Any other statement
          answers in the format of its ``FORMAT <fmt>`` clause (last, or before ``SETTINGS``; comments and
          strings are not clauses: :func:`chserver.sqlscan.output_format`), else the ``X-ClickHouse-Format``
          header, else ``default_format``, else ``TabSeparated``.
        * The statement is checked first (:func:`chserver.sqlscan.check_statement`): one statement, no
          ``INTO OUTFILE``, no ``file()``/``url()``/``s3()``-like access outside the engine unless ``admin``, no
          ``SYSTEM`` / ``KILL`` for a read-only user.
        * ``HEAD /`` answers as ``GET /`` (``Ok.``, 200); ``HEAD`` with a query runs as a ``GET``.
        * Authentication: :meth:`authenticate` (basic auth, ``X-ClickHouse-User``/``X-ClickHouse-Key``, or
          ``user``/``password`` parameters; the later source wins). Role passed to the engine: ``ro1``
          (readonly=1) for a read-only user, ``ro2`` (readonly=2) for other users' ``GET``, ``rw`` for their
          ``POST``.
        * Parameters: ``database``; ``param_<name>`` -> query parameters; every parameter not in
          :data:`TRANSPORT_PARAMS` -> a setting of this request only; ``query_id`` (default a new UUID4);
          ``session_id`` echoed as ``X-ClickHouse-Session-Id`` (no session state is kept);
          ``enable_http_compression`` ``1``/``true`` compresses the response per ``Accept-Encoding``
          (:func:`compress`; ``q=0`` refuses a method).
        * Request body: read as it streams in (:func:`read_body`) and decompressed per ``Content-Encoding``
          (:func:`decompress`); at most ``CLICKHOUSE_MAX_BODY_MB`` MiB both as sent and after decompression, both
          bounds held while reading and decompressing (a decompression bomb is refused, never expanded).

        Returns:
            200: the result bytes, ``Content-Type`` :func:`content_type` of the format, headers
            ``X-ClickHouse-Format``, ``-Timezone``, ``-Query-Id``, ``-Summary`` (JSON, values as strings: rows
            and bytes read and written, ``result_rows`` (rows of the result), ``result_bytes`` (bytes of the
            body before compression), ``elapsed_ns``) and ``-Server-Display-Name``.

        Errors are answered, never raised: :meth:`error` with the status :func:`http_status` gives the error's
        name. 403: AUTHENTICATION_FAILED (516; no, unknown or wrong credentials), ACCESS_DENIED (497; e.g. a
        non-admin's ``file()``). 400: BAD_ARGUMENTS (36; a URL parameter that is not UTF-8 once percent-decoded,
        :func:`invalid_utf8_param`: checked before anything else), SYNTAX_ERROR (62; empty or non-UTF-8 query, a second statement, the
        engine's parse errors), UNKNOWN_COMPRESSION_METHOD (55),
        CANNOT_DECOMPRESS (271), the CANNOT_PARSE_* and type errors. 404: the UNKNOWN_* errors (table, setting
        (115), format, database, ...). 413: QUERY_IS_TOO_LARGE (202; body over the limit). 501: NOT_IMPLEMENTED
        (48; ``compress=1``/``decompress=1``). 408: TIMEOUT_EXCEEDED, SOCKET_TIMEOUT (209; the request body paused
        longer than ``http_receive_timeout``, default 30 s: :func:`read_body`). 500: INTO_OUTFILE_NOT_ALLOWED (358), any
        other engine error (e.g. 164 READONLY, a read-only user's write) and any other exception (logged with its traceback here, answered
        as 1001 STD_EXCEPTION without it).
        """
        q = request.query_params
        bad = invalid_utf8_param(request.scope.get("query_string", b""))
        if bad is not None:   # Starlette would turn the bytes into U+FFFD: the query would run on other text
            return self.error(ClickHouseError(36, f"Code: 36. DB::Exception: URL parameter '{bad}' is not valid "
                                                  "UTF-8 after percent-decoding. (BAD_ARGUMENTS)", "BAD_ARGUMENTS"),
                              str(uuid.uuid4()))
        query_id = q.get("query_id") or str(uuid.uuid4())
        if request.method in ("GET", "HEAD") and "query" not in q:   # HEAD: as GET (the server sends no body)
            return Response("Ok.\n", media_type="text/plain; charset=UTF-8")
        try:
            user, readonly = self.authenticate(request)
            if q.get("compress") == "1" or q.get("decompress") == "1":
                raise ClickHouseError(48, "Code: 48. DB::Exception: ClickHouse's native HTTP block compression "
                                          "(compress=1/decompress=1) is not supported by this endpoint; use HTTP "
                                          "compression (Content-Encoding / Accept-Encoding). (NOT_IMPLEMENTED)",
                                      "NOT_IMPLEMENTED")
            body = decompress(await read_body(request, self.max_body, receive_timeout(q)),
                              request.headers.get("content-encoding", ""), self.max_body)
            text = q.get("query", "").encode()
            if request.method == "POST" and body:
                text = text + b"\n" + body if text else body
            insert_data = insert_format = None
            m = _INSERT_RE.match(text[:1 << 16])
            if m:
                sql = m.group(1).decode("utf-8", "replace")
                insert_format = m.group(2).decode()
                insert_data = text[m.end():]
                fmt = "TabSeparated"
                check_statement(sql, external=user == "admin", readonly=readonly)
            else:
                try:
                    sql = text.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ClickHouseError(62, "Code: 62. DB::Exception: Syntax error: the query is not valid UTF-8. "
                                              "(SYNTAX_ERROR)", "SYNTAX_ERROR") from None
                if not sql:
                    raise ClickHouseError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", "SYNTAX_ERROR")
                check_statement(sql, external=user == "admin", readonly=readonly)
                fmt = output_format(sql) or (request.headers.get("x-clickhouse-format") or q.get("default_format")
                                             or "TabSeparated")
            params = {k[6:]: v for k, v in q.items() if k.startswith("param_")}
            settings = {k: v for k, v in q.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
            role = "ro1" if readonly else ("rw" if request.method == "POST" else "ro2")
            database = request.headers.get("x-clickhouse-database") or q.get("database")  # the header wins
            res = await run_in_threadpool(self.engine.execute, sql, fmt, role=role, database=database,
                                          settings=settings, params=params, insert_data=insert_data,
                                          insert_format=insert_format)
        except ClickHouseError as err:
            return self.error(err, query_id)
        except ClientDisconnect:   # nobody to answer; not an internal error (it was logged as one, with a traceback)
            log.info("query %s: the client disconnected while sending the request", query_id)
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client; logged here
            log.exception("internal error")
            return self.error(ClickHouseError(1001, f"Code: 1001. DB::Exception: {type(exc).__name__}: {exc}. "
                                                    "(STD_EXCEPTION)", "STD_EXCEPTION"), query_id)
        summary = {"read_rows": str(res.rows_read), "read_bytes": str(res.bytes_read),
                   "written_rows": str(res.rows_written), "written_bytes": str(res.bytes_written),
                   "total_rows_to_read": str(res.rows_read), "result_rows": str(res.result_rows),
                   "result_bytes": str(res.size),
                   "elapsed_ns": str(int(res.elapsed_s * 1e9))}
        headers = {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": self.engine.timezone,
                   "X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
                   "X-ClickHouse-Server-Display-Name": "chserver"}
        if q.get("session_id"):
            headers["X-ClickHouse-Session-Id"] = q["session_id"]
        enc = None
        if _true(q.get("enable_http_compression", "0")) and res.size:
            enc = encoding_for(request.headers.get("accept-encoding", ""))
        if enc:
            headers["Content-Encoding"] = enc
        if res.size <= STREAM_FROM:
            data = res.data
            res.close()
            return Response(compress(data, enc) if enc else data, media_type=content_type(fmt), headers=headers)
        if not enc:
            headers["Content-Length"] = str(res.size)
        return StreamingResponse(_body(res, enc), media_type=content_type(fmt), headers=headers)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Starlette:
    """The ASGI application. Opens chDB at CLICKHOUSE_CHDB_PATH on startup (unless ``engine`` is given) and
    closes it on shutdown.

    Raises:
        ConfigError: a user's password is missing (names CLICKHOUSE_*_PASSWORD).
    """
    s = settings or get_settings()
    s.require("clickhouse_admin_password", "clickhouse_writer_password", "clickhouse_bi_password")
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["engine"] = engine or Engine(s.clickhouse_chdb_path)
        state["server"] = Server(s, state["engine"])
        yield
        if engine is None:
            state["engine"].close()

    async def ping(request):
        return await state["server"].ping(request)

    async def query(request):
        return await state["server"].query(request)

    return Starlette(routes=[Route("/ping", ping, methods=["GET", "HEAD"]),
                             Route("/replicas_status", ping, methods=["GET"]),
                             Route("/", query, methods=["GET", "POST"]),
                             Route("/query", query, methods=["GET", "POST"])],
                     lifespan=lifespan)
