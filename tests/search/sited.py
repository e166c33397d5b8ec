"""Real PTB-XL records in an embedded store, split over two sites, and a tokens file of named callers.

Shared by the access-control, audit, metrics and snapshot tests (each builds its own store from it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgsearch.ecg.schema import EcgPayload
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import sources
from ecgsearch.search.engine.store import EdgeStore

SITES = ("site-a", "site-b")
TOKENS = {"ward-a": "tok-ward-a", "ingest": "tok-ingest", "ops": "tok-ops", "pusher": "tok-pusher"}


@dataclass(frozen=True)
class Sited:
    """The store, the model that made it, and each record's payload (with its site) and vector."""

    store: EdgeStore
    embedder: Embedder
    payloads: list[EcgPayload]
    vectors: np.ndarray

    def of_site(self, site: str) -> list[str]:
        return [p.record_id for p in self.payloads if p.site == site]


def build(ptbxl_dir: Path, root: Path, n: int = 30) -> Sited:
    """``n`` PTB-XL records embedded with the bundled model; even rows at site-a, odd rows at site-b."""
    embedder = Embedder()
    records = [sources.load(c) for c in sources.select(sources.enumerate_source(ptbxl_dir), limit=n)]
    payloads = [r.payload.model_copy(update={"site": SITES[i % 2]}) for i, r in enumerate(records)]
    vectors = embedder.embed(np.stack([r.signal for r in records]))
    store = EdgeStore(root / "store", "ecgs")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    store.upsert(payloads, vectors)
    store.optimize()
    return Sited(store, embedder, payloads, vectors)


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_file(path: Path) -> Path:
    """Callers: ward-a (search, site-a only), ingest (search+write), ops (search+admin), pusher (write)."""
    path.write_text(
        "# caller  scopes  sites  credential\n"
        f"ward-a  search  site-a  sha256:{sha(TOKENS['ward-a'])}\n"
        f"ingest  search,write  *  sha256:{sha(TOKENS['ingest'])}\n"
        f"ops  search,admin  *  sha256:{sha(TOKENS['ops'])}\n"
        f"pusher  write  *  sha256:{sha(TOKENS['pusher'])}\n"
    )
    return path


def auth(caller: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[caller]}"),)
