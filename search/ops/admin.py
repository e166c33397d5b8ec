"""Operator tasks on a store: what a collection holds, one record, aliases; who holds a locked store.

Plain functions over the ``Store`` facade returning JSON-ready dicts: ``ecgsearch collection ...``
prints them as text or ``--json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ecgsearch.ecg.schema import EcgPayload, StoreUnavailable
from ecgsearch.search.engine.store import Store, open_store

CARD_FIELDS = ("name", "version", "embedding_dim", "initialisation", "sampling_rate_hz", "embedding")


def open_for_admin(
    *, path: Path | None, url: str | None, api_key: str | None, collection: str, local: bool = False
) -> Store:
    """open_store, with a locked embedded store reported by the processes that hold it."""
    try:
        return open_store(path=path, url=url, api_key=api_key, collection=collection, local=local)
    except StoreUnavailable as error:
        if path is None or "already open" not in str(error):
            raise
        holders = lock_holders(path)
        who = "; ".join(holders) if holders else "another process"
        raise StoreUnavailable(
            f"store {path} is held by {who}; stop it, or ask the running service (ecgsearch query/stats)"
        ) from None


def lock_holders(root: Path) -> list[str]:
    """'pid N (command)' for each process with a file open under ``root`` (Linux /proc; else empty)."""
    root = Path(root).resolve()
    found: list[str] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if any(t.startswith(str(root) + os.sep) for t in targets):
            words = [Path(command[0].decode(errors="replace")).name] + [
                w.decode(errors="replace") for w in command[1:3] if w
            ]
            found.append(f"pid {entry.name} ({' '.join(words)})")
    return sorted(found)


def collection_info(store: Store, model: Path | None = None) -> dict[str, Any]:
    """Count, dim, model version and card, index settings, aliases, diagnosis counts and the named views
    (each with its size, distance and version; empty for a collection made before views)."""
    info = store.info()
    settings = store.index_settings().model_dump(mode="json")
    report = _info_report(info, model_card(info.model_version, model), settings, store.aliases())
    return {**report, "views": {v: spec.model_dump() for v, spec in store.views().items()}}


def model_card(version: str, model: Path | None = None) -> dict[str, Any] | None:
    """The card of the model (``model`` or the bundled one) when it made this collection, else None."""
    from ecgsearch.export.card import ModelCard, card_file
    from ecgsearch.export.runtime import ModelError, bundled_model, read_card

    try:
        path = model or bundled_model()
        beside = card_file(path)  # written at export: no onnxruntime session needed
        card = ModelCard.model_validate_json(beside.read_text()) if beside.is_file() else read_card(path)
    except (ModelError, OSError, ValueError):
        return None
    if card.version != version:
        return None
    return _card_fields(card)


def _card_fields(card: Any) -> dict[str, Any]:
    return {key: getattr(card, key) for key in CARD_FIELDS}


def _info_report(
    info: Any, card: dict[str, Any] | None, settings: dict[str, Any] | None, aliases: dict[str, str] | None
) -> dict[str, Any]:
    """The one shape of ``collection info``, from a store or from a running service."""
    return {
        "collection": info.name,
        "backend": info.backend,
        "count": info.count,
        "dim": info.dim,
        "indexed": info.indexed,
        "model_version": info.model_version,
        "model_card": card,
        "index_settings": settings,
        "aliases": aliases,
        "diagnosis_counts": dict(sorted(info.diagnosis_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def get_record(store: Store, record_id: str, *, vector: bool = False) -> dict[str, Any]:
    """One stored record's payload, and its vector when asked."""
    payload, stored = store.get(record_id)
    return _record(record_id, payload, stored if vector else None)


def switch_alias(store: Store, name: str, target: str) -> dict[str, Any]:
    """Point alias ``name`` at collection ``target``; returns the previous and the new target."""
    before = store.aliases().get(name)
    store.set_alias(name, target)
    return {"alias": name, "previous": before, "target": target}


def service_info(client: Any) -> dict[str, Any]:
    """``collection_info`` as a running service (an ``EcgSearchClient``) reports it: no settings, aliases."""
    return _info_report(client.info(), _card_fields(client.model_card()), None, None)


def service_record(client: Any, record_id: str, *, vector: bool = False) -> dict[str, Any]:
    """``get_record`` through a running service."""
    payload, stored = client.get_record(record_id, with_vector=vector)
    return _record(record_id, payload, stored if vector else None)


def _record(record_id: str, payload: EcgPayload, vector: Any | None) -> dict[str, Any]:
    out: dict[str, Any] = {"record_id": record_id, "payload": payload.model_dump(mode="json")}
    if vector is not None:
        out["vector"] = [round(float(v), 7) for v in vector]
    return out
