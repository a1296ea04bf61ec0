"""A ClickHouse SQL lexer just deep enough for the checks the HTTP layer makes before a statement reaches chDB.

chDB runs as ``clickhouse-local``, which trusts its caller: it runs every statement of a multi-statement text,
writes ``INTO OUTFILE`` / reads ``FROM INFILE`` on the server's file system, and its ``file()`` family is not
confined to ``user_files_path`` (the ``user_files_path`` startup argument is accepted and ignored: measured on
chDB 4.4, ``file('/etc/passwd')`` still reads). A ClickHouse server refuses all of these over HTTP, so the
endpoint does it here, on the statement's *code*: the text with string literals emptied and comments removed,
as ClickHouse's lexer sees them ('...' and "..." / `...` with backslash escapes, the typographic quotes
U+2018/U+2019 (a string) and U+201C/U+201D (a name) that ClickHouse also reads, ``--`` and ``# ``/``#!`` line
comments, nested ``/* */`` block comments). A ``$tag$...$tag$`` heredoc is *not* emptied: its text is scanned as
code. That refuses a heredoc holding ``;`` or ``file(`` (rare in a query) but cannot be fooled the other way: an
unclosed ``$x$``, which ClickHouse reads as part of a name, hid the rest of the statement from the checks while
the engine ran it.
"""

from __future__ import annotations

import functools
import re

from chserver.engine import ClickHouseError

#: table functions, table / database engines, dictionary sources, disks and scalar functions that reach outside
#: the engine's own tables: files of the server, other hosts, object stores, processes (compared lower-case).
#: A ClickHouse server needs a grant for each (READ/WRITE ON FILE, URL, S3, REMOTE, ...), which the platform's
#: users do not have on the compose stack.
EXTERNAL = frozenset(n.lower() for n in """
    file fileCluster filesystem url urlCluster http s3 s3Cluster S3Queue gcs oss cosn hdfs hdfsCluster
    azureBlobStorage azureBlobStorageCluster AzureQueue deltaLake deltaLakeAzure deltaLakeAzureCluster
    deltaLakeCluster deltaLakeLocal deltaLakeS3 deltaLakeS3Cluster hudi hudiCluster iceberg icebergAzure
    icebergAzureCluster icebergCluster icebergHDFS icebergHDFSCluster icebergLocal icebergLocalCluster icebergS3
    icebergS3Cluster paimon paimonAzure paimonAzureCluster paimonCluster paimonHDFS paimonHDFSCluster paimonLocal
    paimonS3 paimonS3Cluster DataLakeCatalog remote remoteSecure cluster clusterAllReplicas Distributed clickhouse
    mysql postgresql MaterializedPostgreSQL sqlite mongodb redis jdbc odbc bigquery ytsaurus prometheusQuery
    prometheusQueryRange executable executable_pool ExecutablePool python arrowstream eval Kafka FileLog
    NATS RabbitMQ disk
""".split())

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: a name followed by an opening parenthesis: a function, table function, engine or dictionary source call
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
#: what makes ``name (`` a table's name and column list rather than a call: ``db.name (``, ``CREATE [OR REPLACE]
#: [TEMPORARY] TABLE|VIEW|DICTIONARY [IF NOT EXISTS] name (``, ``INSERT INTO [TABLE] name (``
_NAMED = re.compile(r"(?:\.\s*|\b(?:(?:CREATE|ATTACH|REPLACE)\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?"
                    r"(?:MATERIALIZED\s+|LIVE\s+|WINDOW\s+)?(?:TABLE|VIEW|DICTIONARY)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
                    r"|INSERT\s+INTO\s+(?:TABLE\s+)?))$", re.I)
_FORMAT = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)\s*(?=$|;|\bSETTINGS\b)", re.I)


@functools.lru_cache(maxsize=4)
def code_of(sql: str) -> str:
    """``sql`` as ClickHouse's lexer tokenises it, without what cannot be code: each string literal becomes
    ``''``, each comment one space, a quoted identifier (`` `x` `` or ``"x"``) its bare name when it is a plain
    identifier (``x``), else ``_``. An unterminated literal or comment runs to the end (the engine refuses it).
    The last few results are cached: a request's statement is scanned by :func:`check_statement` and then
    :func:`output_format`, one character at a time in Python."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`\u2018\u201c":
            close = {"\u2018": "\u2019", "\u201c": "\u201d"}.get(c, c)
            j, buf = i + 1, []
            while j < n and sql[j] != close:
                if sql[j] == "\\" and j + 1 < n:
                    buf.append(sql[j + 1])
                    j += 2
                    continue
                buf.append(sql[j])
                j += 1
            name = "".join(buf)
            out.append("''" if c in "'\u2018" else (name if _IDENT.fullmatch(name) else "_"))
            i = j + 1
        elif sql.startswith("--", i) or (c == "#" and i + 1 < n and sql[i + 1] in " !"):
            j = sql.find("\n", i)
            out.append(" ")
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(" ")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def output_format(sql: str) -> str | None:
    """The name of a statement's ``FORMAT <name>`` clause (as written), or None. ClickHouse puts it after the
    query and before an optional ``SETTINGS`` clause; a word ``format`` in a string, a comment, a column name
    (``SELECT format FROM t``) or the ``format()`` function is no clause."""
    names = [m.group(1) for m in _FORMAT.finditer(code_of(sql))]
    return names[-1] if names else None


def check_statement(sql: str, *, external: bool = False, readonly: bool = False) -> None:
    """Refuse what a ClickHouse server refuses over HTTP, before the engine sees it.

    Args:
        sql: the statement (for an INSERT with data: the part before its data).
        external: allow the :data:`EXTERNAL` functions, engines and sources (the ``admin`` user).
        readonly: the user is read-only (``bi_reader``): ``SYSTEM`` and ``KILL`` statements are refused too. On the
            compose server that user holds only ``SELECT ON retail.*``, so ``SYSTEM STOP MERGES`` needs a grant it
            lacks, and there a ``KILL QUERY`` reaches its own queries only; in chDB every query is one process's,
            and ``readonly=1`` stops neither.
    Raises:
        ClickHouseError: 62 SYNTAX_ERROR (HTTP 400) for a second statement after a ``;`` (one trailing ``;`` is
            allowed, as on a server); 358 INTO_OUTFILE_NOT_ALLOWED (500) for ``INTO OUTFILE`` and ``FROM INFILE``
            (client-side clauses: the server would write or read its own files); 497 ACCESS_DENIED (403) for an
            :data:`EXTERNAL` name called with ``(...)`` (``file('/etc/passwd')``, ``INSERT INTO FUNCTION
            url(...)``, ``ENGINE = File(...)``, ``SOURCE(EXECUTABLE(...))``) or ``ATTACH ... FROM '<path>'``
            unless ``external``; 497 ACCESS_DENIED for ``SYSTEM ...`` or ``KILL ...`` when ``readonly``.
    """
    code = code_of(sql)
    semi = code.find(";")
    if semi >= 0 and code[semi + 1:].strip():
        raise ClickHouseError(62, "Code: 62. DB::Exception: Syntax error (Multi-statements are not allowed): failed at "
                                  f"position {semi + 1} (;): one statement per request. (SYNTAX_ERROR)", "SYNTAX_ERROR")
    # the clause takes a string literal ('' here) or a heredoc ($...$, left as code): a table named outfile or
    # infile (INSERT INTO outfile VALUES ..., SELECT * FROM infile) is no clause
    if re.search(r"\bINTO\s+OUTFILE\s*(?:''|\$)|\bFROM\s+INFILE\s*(?:''|\$)", code, re.I):
        raise ClickHouseError(358, "Code: 358. DB::Exception: INTO OUTFILE is not allowed: INTO OUTFILE and FROM "
                                   "INFILE are client-side clauses; over HTTP the result is the response body. "
                                   "(INTO_OUTFILE_NOT_ALLOWED)", "INTO_OUTFILE_NOT_ALLOWED")
    if readonly and re.match(r"\s*\(*\s*(SYSTEM|KILL)\b", code, re.I):
        word = re.match(r"\s*\(*\s*(\w+)", code).group(1).upper()
        raise ClickHouseError(497, f"Code: 497. DB::Exception: Not enough privileges: a read-only user may not run "
                                   f"{word} statements. (ACCESS_DENIED)", "ACCESS_DENIED")
    if external:
        return
    called = next((m.group(1) for m in _CALL.finditer(code) if m.group(1).lower() in EXTERNAL
                   and not _NAMED.search(code, max(0, m.start() - 120), m.start())), None)
    if called is None and re.search(r"\bATTACH\b.*\bFROM\s*(?:''|\$)", code, re.I | re.S):
        called = "ATTACH ... FROM"
    if called is not None:
        raise ClickHouseError(497, f"Code: 497. DB::Exception: Not enough privileges: {called}(...) reaches files, "
                                   "hosts or processes outside the engine's tables, which only the admin user may "
                                   "do on this endpoint. (ACCESS_DENIED)", "ACCESS_DENIED")
