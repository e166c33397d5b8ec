"""Who an ECG is, without saying who the patient is: content hashes, patient pseudonyms, the site secret.

- **Record id** (built in ``sources``): ``<dataset>:<native id>``, the dataset's own identifier of the
  ECG, never a path. The same id met again is checked against the stored **content hash**: the same
  ECG is skipped, a different one is a collision, reported, never overwritten or dropped silently.
- **Content hash**: SHA-256 over a version tag, the sampling rate, the lead names, the units, the shape
  and the samples as little-endian float32 at their stored rate (NaN canonicalised). Two reads of one
  file give one hash whatever the reader; any change of rate, lead set, gain or sample gives another.
- **Patient pseudonym**: ``p-`` + the first 128 bits of HMAC-SHA256(site secret, dataset, patient id).
  One patient of one dataset keeps one pseudonym across ingests at a site; without the secret the
  mapping cannot be reversed or recomputed (patient ids are small integers: a plain hash would be a
  lookup table). An ECG whose source names no patient gets a pseudonym of its own, keyed the same way
  on its record id, so same-patient rules treat it as a patient of one ECG and never as "unknown".
- **Site secret**: given by the operator (``--site-secret-file`` / ``ECGSEARCH_SITE_SECRET_FILE``);
  for an embedded store, when none is given, one is generated once into ``<store>/site-secret``
  (mode 0600) and reused. A Qdrant server has no folder of ours to keep it in: its secret must be given.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HASH_VERSION = b"ecgsearch-content-v1"
SECRET_FILE_NAME = "site-secret"
MIN_SECRET_BYTES = 16
PSEUDONYM_HEX = 32  # 128 bits: collisions are negligible at any archive size


class SecretError(ValueError):
    """A site secret that is missing, unreadable or too short; the message says how to supply one."""


def content_hash(
    signal: np.ndarray, fs: float, leads: tuple[str, ...] | list[str], units: tuple[str, ...] | list[str]
) -> str:
    """SHA-256 hex digest of an ECG as stored (see the module doc for exactly what it covers)."""
    samples = np.array(signal, dtype="<f4", order="C", copy=True)
    samples[np.isnan(samples)] = np.float32("nan")  # one NaN bit pattern whatever produced it
    digest = hashlib.sha256(HASH_VERSION)
    for part in (repr(float(fs)), "\x1f".join(leads), "\x1f".join(units), repr(samples.shape)):
        digest.update(b"\x00" + part.encode())
    digest.update(b"\x00" + samples.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Pseudonymizer:
    """Keyed pseudonyms for patients (and for ECGs without one); picklable for worker processes."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise SecretError(f"site secret has {len(self.secret)} bytes; at least {MIN_SECRET_BYTES} needed")

    @classmethod
    def ephemeral(cls) -> Pseudonymizer:
        """A random key of its own: pseudonyms that link to nothing outside this object."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def for_this_process(cls) -> Pseudonymizer:
        """One random key per process (benchmarks, tests, library calls given no key): one patient,
        one pseudonym within the process; never used by the ``ingest`` command."""
        global _PROCESS_KEY
        if _PROCESS_KEY is None:
            _PROCESS_KEY = cls.ephemeral()
        return _PROCESS_KEY

    def patient(self, dataset: str, patient_id: str) -> str:
        """The pseudonym of a dataset's patient: the same for every ECG of that patient."""
        return self._mac(b"patient", dataset, patient_id)

    def lone_ecg(self, record_id: str) -> str:
        """The pseudonym of an ECG whose source names no patient: a patient of its own."""
        return self._mac(b"record", record_id)

    def of(self, dataset: str, patient_id: str | None, record_id: str) -> str:
        """The pseudonym stored in ``patient_id``: the patient's if known, else the ECG's own."""
        if patient_id is not None and patient_id.strip():
            return self.patient(dataset, patient_id.strip())
        return self.lone_ecg(record_id)

    def _mac(self, kind: bytes, *parts: str) -> str:
        message = kind + b"".join(b"\x00" + p.encode() for p in parts)
        return "p-" + hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


_PROCESS_KEY: Pseudonymizer | None = None


def read_secret(path: str | Path) -> bytes:
    """The secret in a file (surrounding whitespace ignored), refused when absent or too short."""
    path = Path(path).expanduser()
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise SecretError(f"cannot read site secret file {path}: {exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(
            f"site secret file {path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} needed "
            "(e.g. `openssl rand -hex 32 > site-secret`)"
        )
    return secret


def default_secret(store_root: str | Path) -> bytes:
    """``<store>/site-secret``, generated once (0600, 64 hex characters) and reused by later runs."""
    path = Path(store_root).expanduser() / SECRET_FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return read_secret(path)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    return read_secret(path)


def site_pseudonymizer(secret_file: str | Path | None, store_root: str | Path | None) -> Pseudonymizer:
    """The site's pseudonymizer: from the operator's file, else the embedded store's default secret."""
    if secret_file is not None:
        return Pseudonymizer(read_secret(secret_file))
    if store_root is None:
        raise SecretError(
            "a Qdrant server needs the site secret that keys patient pseudonyms: give --site-secret-file "
            "(or ECGSEARCH_SITE_SECRET_FILE), the same file for every ingest into this site's collections"
        )
    return Pseudonymizer(default_secret(store_root))
