"""Identity rules now live in ``ecgsearch.search.identity`` (the serving process writes pushed ECGs
too); this name stays for the ingest code and scripts that import it from here."""

from ecgsearch.search.identity import (
    DUPLICATE_THRESHOLD,
    HASH_VERSION,
    MIN_SECRET_BYTES,
    PSEUDONYM_HEX,
    SECRET_FILE_NAME,
    Pseudonymizer,
    SecretError,
    content_hash,
    default_secret,
    read_secret,
    site_pseudonymizer,
)

__all__ = [
    "DUPLICATE_THRESHOLD",
    "HASH_VERSION",
    "MIN_SECRET_BYTES",
    "PSEUDONYM_HEX",
    "SECRET_FILE_NAME",
    "Pseudonymizer",
    "SecretError",
    "content_hash",
    "default_secret",
    "read_secret",
    "site_pseudonymizer",
]
