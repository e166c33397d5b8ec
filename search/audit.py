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
- ``returned`` / ``returned_ids``: how many records the reply names, and their ids.

Never the token, never a signal or vector: only ids, the filter and counts are read off the messages.
Every list keeps at most ``MAX_IDS`` ids of at most ``MAX_ID_CHARS`` characters, the filter at most
``MAX_FILTER_CHARS`` of JSON, so a line stays under about 8 KiB whatever the request.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

MAX_IDS = 50
MAX_ID_CHARS = 64
MAX_FILTER_CHARS = 1000
UNAUTHENTICATED = "unauthenticated"
FILE_MODE = 0o640  # a new audit file: owner writes, its group (the log shipper) reads, nobody else


def _cut(text: str, limit: int = MAX_ID_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ids(values: list[str]) -> list[str]:
    return [_cut(v) for v in values[:MAX_IDS]]


def _filter_of(request: Message) -> dict[str, Any] | str | None:
    """The first non-empty ``options.filter`` of the request (or of its batch queries), bounded."""
    options = []
    if request.DESCRIPTOR.fields_by_name.get("options") is not None:
        options.append(request.options)  # type: ignore[attr-defined]
    if request.DESCRIPTOR.fields_by_name.get("queries") is not None:
        options.extend(q.options for q in request.queries)  # type: ignore[attr-defined]
    for opt in options:
        if opt.HasField("filter"):
            found = MessageToDict(opt.filter, preserving_proto_field_name=True)
            if found:
                text = json.dumps(found, separators=(",", ":"))
                return found if len(text) <= MAX_FILTER_CHARS else _cut(text, MAX_FILTER_CHARS)
    return None


def _requested(request: Message) -> tuple[list[str], list[str]]:
    """Record ids and patient pseudonyms a request names."""
    records: list[str] = []
    patients: list[str] = []
    fields = request.DESCRIPTOR.fields_by_name
    if "record_id" in fields and request.record_id:  # type: ignore[attr-defined]
        records.append(request.record_id)  # type: ignore[attr-defined]
    if "queries" in fields:
        records.extend(q.record_id for q in request.queries if q.record_id)  # type: ignore[attr-defined]
    flt = _filter_of(request)
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
        ids.extend(h.record_id for h in reply.hits)  # type: ignore[attr-defined]
    if "results" in fields:
        ids.extend(h.record_id for r in reply.results for h in r.hits)  # type: ignore[attr-defined]
    if "payload" in fields and reply.HasField("payload"):
        ids.append(reply.payload.record_id)  # type: ignore[attr-defined]
        if reply.payload.patient_id:  # type: ignore[attr-defined]
            patients.append(reply.payload.patient_id)  # type: ignore[attr-defined]
    elif "record_id" in fields and reply.record_id:  # type: ignore[attr-defined]
        ids.append(reply.record_id)  # type: ignore[attr-defined]
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
    now: datetime | None = None,
) -> dict[str, Any]:
    """The audit record of one call (``request``/``reply``: protobuf messages, or None)."""
    records, patients = _requested(request) if isinstance(request, Message) else ([], [])
    returned, revealed = _returned(reply if isinstance(reply, Message) else None)
    return {
        "time": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "request_id": request_id,
        "caller": _cut(caller),
        "method": method,
        "status": status,
        "record_ids": _ids(records),
        "patient_ids": _ids(list(dict.fromkeys(patients + revealed))),
        "filter": _filter_of(request) if isinstance(request, Message) else None,
        "returned": len(returned),
        "returned_ids": _ids(returned),
        "latency_ms": round(latency_s * 1000, 3),
    }


class AuditLog:
    """An append-only sink of audit lines: a file (opened for appending, created 0640) or ``-`` for stdout."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self._lock = threading.Lock()
        self._own: IO[str] | None = None
        if self.target != "-":
            path = Path(self.target)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
                self._own = os.fdopen(fd, "a", encoding="utf-8")
            except OSError as exc:
                raise OSError(f"cannot open audit log {path}: {exc.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(", ", ": "), ensure_ascii=True) + "\n"
        with self._lock:
            stream = self._own if self._own is not None else sys.stdout
            stream.write(line)
            stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._own is not None:
                self._own.close()
                self._own = None
