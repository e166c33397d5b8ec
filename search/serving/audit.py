"""The audit trail: one JSON line per request, answering "who looked at which ECGs, when".

Each line (keys in this order)::

    {"time": "2026-11-29T19:40:00.123456Z", "request_id": "...", "caller": "ward-viewer",
     "method": "SearchByRecord", "status": "OK", "record_ids": ["ptbxl:17"], "patient_ids": [],
     "filter": {"diagnoses_any": ["164889003"]}, "returned": 10, "returned_ids": ["ptbxl:9", ...],
     "latency_ms": 3.21}

- ``caller``: the name the tokens file (or a client certificate) gives the credential: a service
  account or certificate name, never a patient's; ``unauthenticated`` for a refused credential;
- ``record_ids``: the records a request names (search by record, GetRecord, GetEcg, batch queries);
- ``patient_ids``: patient pseudonyms the request names (excluded patients) or the reply reveals
  (GetRecord's payload); the stored pseudonyms only, never a source's patient id;
- ``filter``: the request's payload filter as given (the batch's first non-empty one);
- ``returned`` / ``returned_ids``: how many records the reply names, and their ids (a push's reply:
  the ids stored or skipped);
- ``error``: on a refused call only, why (the status message, cut at 300 characters).

Every call to the service gets exactly one line: answered, refused by the service, refused before it
(no or a wrong credential, an unknown method, a request over the message limit, the server at its
limit of concurrent calls) and refused because the trail itself cannot be written. ``AuditTrail``
holds that guarantee: by default (fail closed) a call whose line cannot be written is answered
UNAVAILABLE instead of its reply, the server reports NOT_SERVING, later calls are refused before any
work, and their lines wait in memory (at most ``BACKLOG`` of them) until the sink takes lines again,
which is retried every second; then the server serves again. ``fail_open`` (``--audit-fail-open``)
keeps answering and logs each line lost.

Never the token, never a signal or vector: only ids, the filter and counts are read off the messages.
Every list keeps at most ``MAX_IDS`` ids of at most ``MAX_ID_CHARS`` characters, the filter at most
``MAX_FILTER_CHARS`` of JSON, so a line stays under about 8 KiB whatever the request.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from ecgsearch.search._proto import search_pb2 as pb

log = logging.getLogger("ecgsearch.audit")

MAX_IDS = 50
MAX_ID_CHARS = 64
MAX_FILTER_CHARS = 1000
UNAUTHENTICATED = "unauthenticated"
FILE_MODE = 0o640  # a new audit file: owner writes, its group (the log shipper) reads, nobody else
MAX_ERROR_CHARS = 300
BACKLOG = 10_000  # lines kept in memory while the sink cannot be written (about 10 MB at most)
RETRY_S = 1.0  # how often a broken sink is tried again


def _cut(text: str, limit: int = MAX_ID_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ids(values: list[str]) -> list[str]:
    return [_cut(v) for v in values[:MAX_IDS]]


def _filter_of(request: Message) -> dict[str, Any] | str | None:
    """The first non-empty ``options.filter`` of the request (or of its batch queries), bounded."""
    options = []
    if request.DESCRIPTOR.fields_by_name.get("options") is not None:
        options.append(request.options)
    if request.DESCRIPTOR.fields_by_name.get("queries") is not None:
        options.extend(q.options for q in request.queries)
    for opt in options:
        if opt.filter.ByteSize():  # an empty filter (most searches) is not worth MessageToDict's ~20 us
            found = MessageToDict(opt.filter, preserving_proto_field_name=True)
            if found:
                text = json.dumps(found, separators=(",", ":"))
                return found if len(text) <= MAX_FILTER_CHARS else _cut(text, MAX_FILTER_CHARS)
    return None


def _requested(request: Message, flt: dict[str, Any] | str | None) -> tuple[list[str], list[str]]:
    """Record ids and patient pseudonyms a request names (``flt``: its ``_filter_of``)."""
    records: list[str] = []
    patients: list[str] = []
    fields = request.DESCRIPTOR.fields_by_name
    if "record_id" in fields and request.record_id:
        records.append(request.record_id)
    if "queries" in fields:
        records.extend(q.record_id for q in request.queries if q.record_id)
    if isinstance(flt, dict):
        patients.extend(flt.get("exclude_patient_ids", []))
    return records, patients


def _returned(reply: Message | None) -> tuple[list[str], list[str]]:
    """Record ids a reply names (hits, batch results, a payload) and patient pseudonyms it reveals."""
    if reply is None:
        return [], []
    fields = reply.DESCRIPTOR.fields_by_name
    ids: list[str] = []
    patients: list[str] = []
    if "hits" in fields:
        ids.extend(h.record_id for h in reply.hits)
    if "results" in fields:
        for r in reply.results:
            if "hits" in r.DESCRIPTOR.fields_by_name:  # a batch's search results
                ids.extend(h.record_id for h in r.hits)
            elif r.record_id and r.status != pb.UPSERT_STATUS_REJECTED:  # a push's stored or skipped ECGs
                ids.append(r.record_id)
    if "payload" in fields and reply.HasField("payload"):
        ids.append(reply.payload.record_id)
        if reply.payload.patient_id:
            patients.append(reply.payload.patient_id)
    elif "record_id" in fields and reply.record_id:
        ids.append(reply.record_id)
    return ids, patients


def entry(
    *,
    request_id: str,
    caller: str,
    method: str,
    status: str,
    request: Any,
    reply: Any,
    latency_s: float,
    error: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The audit record of one call (``request``/``reply``: protobuf messages, or None)."""
    flt = _filter_of(request) if isinstance(request, Message) else None
    records, patients = _requested(request, flt) if isinstance(request, Message) else ([], [])
    returned, revealed = _returned(reply if isinstance(reply, Message) else None)
    line = {
        "time": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "request_id": request_id,
        "caller": _cut(caller),
        "method": method,
        "status": status,
        "record_ids": _ids(records),
        "patient_ids": _ids(list(dict.fromkeys(patients + revealed))),
        "filter": flt,
        "returned": len(returned),
        "returned_ids": _ids(returned),
        "latency_ms": round(latency_s * 1000, 3),
    }
    if error:
        line["error"] = _cut(error, MAX_ERROR_CHARS)
    return line


class AuditLog:
    """An append-only sink of audit lines: a file (opened for appending, created 0640) or ``-`` for stdout.

    Each line is one ``os.write`` on a file opened with O_APPEND, so lines of concurrent calls never
    interleave; a write that fails (OSError) or stops short raises, and the next line starts on a
    new line. ``reopen`` opens the path again (after a disk was freed, or the file was rotated away).
    """

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self._fd: int | None = None
        self._torn = False  # the last write stopped inside a line
        if self.target != "-":
            self._fd = self._open()

    def _open(self) -> int:
        path = Path(self.target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open audit log {path}: {exc.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        self.write_text(format_line(record))

    def write_text(self, text: str) -> None:
        """Append lines (each ending in a newline); OSError when they are not all written."""
        data = ("\n" if self._torn else "") + text
        if self.target == "-":
            sys.stdout.write(data)
            sys.stdout.flush()
            return
        if self._fd is None:
            self._fd = self._open()
        raw = data.encode("utf-8")
        written = os.write(self._fd, raw)
        if written != len(raw):
            self._torn = True
            raise OSError(errno.ENOSPC, f"audit line cut after {written} of {len(raw)} bytes")
        self._torn = False

    def reopen(self) -> None:
        if self.target == "-":
            return
        self.close()
        self._fd = self._open()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


_LINE = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=True)  # one encoder, not one per line


def format_line(record: dict[str, Any]) -> str:
    return _LINE.encode(record) + "\n"


class AuditTrail:
    """The guarantee around a sink: no call is answered unless its line was written (see the module doc).

    ``ready()`` is asked before a call does any work, ``record(line)`` after it: False from either
    means the call must be refused with UNAVAILABLE (``record`` has then kept the line, marked as
    refused, for when the sink works again). ``on_change(ok)`` is told when the sink breaks and when
    it works again (the server's health follows it). Without a sink every call is answered and
    nothing is written; with ``fail_open`` every call is answered and a line that cannot be written
    is logged as lost.
    """

    def __init__(
        self,
        sink: AuditLog | None,
        *,
        fail_open: bool = False,
        on_change: Callable[[bool], None] | None = None,
        retry_s: float = RETRY_S,
    ) -> None:
        self.sink = sink
        self.fail_open = fail_open
        self._on_change = on_change or (lambda ok: None)
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._backlog: deque[str] = deque()
        self._dropped = 0
        self.broken = False
        self._stop = threading.Event()
        self._retrier: threading.Thread | None = None

    def ready(self) -> bool:
        """Whether a call may start: the sink takes lines (a broken one is tried again first)."""
        if self.sink is None or self.fail_open or not self.broken:
            return True
        return self._recover()

    def record(self, line: dict[str, Any], refused: str = "the audit trail cannot be written") -> bool:
        """Write the line; False (the call must be refused) when it cannot be written and failing closed."""
        if self.sink is None:
            return True
        with self._lock:
            try:
                if self._backlog:
                    self._flush()
                self.sink.write(line)
                return True
            except OSError as exc:
                if self.fail_open:
                    log.error(
                        "audit line not written",
                        extra={"fields": {"request_id": line.get("request_id"), "error": str(exc)[:200]}},
                    )
                    return True
                self._keep(as_refused(line, refused))
                self._break(exc)
                return False

    def _keep(self, line: dict[str, Any]) -> None:
        if len(self._backlog) >= BACKLOG:
            self._backlog.popleft()
            self._dropped += 1
        self._backlog.append(format_line(line))

    def _flush(self) -> None:
        """Write the kept lines (and a count of those dropped), oldest first; OSError leaves the rest."""
        assert self.sink is not None
        if self._dropped:
            lost = {"time": _now(), "event": "audit lines dropped", "count": self._dropped}
            self.sink.write(lost)
            self._dropped = 0
        while self._backlog:
            self.sink.write_text(self._backlog[0])
            self._backlog.popleft()

    def _break(self, exc: OSError) -> None:
        if not self.broken:
            self.broken = True
            log.error(
                "audit trail cannot be written: refusing calls", extra={"fields": {"error": str(exc)[:200]}}
            )
            self._on_change(False)
            if self._retrier is None or not self._retrier.is_alive():
                self._retrier = threading.Thread(target=self._retry, name="audit-retry", daemon=True)
                self._retrier.start()

    def _recover(self) -> bool:
        """Reopen the sink and write the kept lines; True (and health told) when it worked."""
        assert self.sink is not None
        with self._lock:
            if not self.broken:
                return True
            try:
                self.sink.reopen()
                self._flush()
            except OSError:
                return False
            self.broken = False
        log.warning("audit trail writable again: serving", extra={"fields": {}})
        self._on_change(True)
        return True

    def _retry(self) -> None:
        while self.broken and not self._stop.wait(self._retry_s):
            self._recover()

    def close(self) -> None:
        self._stop.set()
        if self.sink is not None:
            with self._lock:
                try:
                    self._flush()
                except OSError:
                    log.error("audit lines lost at shutdown", extra={"fields": {"count": len(self._backlog)}})
                self.sink.close()


def as_refused(line: dict[str, Any], why: str) -> dict[str, Any]:
    """The line of a call refused because its line could not be written: nothing was returned."""
    return {**line, "status": "UNAVAILABLE", "returned": 0, "returned_ids": [], "error": why}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
