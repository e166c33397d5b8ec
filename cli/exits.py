"""The one exit-code table of every ``ecgsearch`` command, and the gRPC statuses that map onto it.

A leaf: the standard library only, so every part's command module may import it at module level (the
layout test allows exactly this module and ``ecgsearch.cli.tokens`` from below). docs/commands.md
prints ``TABLE`` once; a test walks the commands through these failure classes.
"""

from __future__ import annotations

OK = 0  # done
FAILED = 1  # anything else: the store, the model, a file that cannot be written, an unexpected status
USAGE = 2  # bad usage or an invalid argument (typer's own usage errors exit 2 as well)
# Where a file goes wrong (tests/test_cli_exits.py walks every command through these): the run's input
# or settings that is not one (a source, a config, a store named to read) is USAGE, refused before any
# work; a model, checkpoint, archive or results file found unreadable when loaded, or an output that
# cannot be written, is FAILED. serve reports a missing store as an environment problem (FAILED).
REJECTS = 3  # the run finished but some records were rejected (listed in the rejects report)
DENIED = 4  # not authenticated or not permitted (no, a wrong or an unscoped token)
NOT_FOUND = 5  # the record (or other named thing) is not there
UNAVAILABLE = 6  # the service cannot be reached, is overloaded, or the deadline passed

# (code, meaning) in the order docs/commands.md shows them.
TABLE = (
    (OK, "done"),
    (
        FAILED,
        "failed for any other reason: a model, checkpoint or archive that cannot be read, an output that "
        "cannot be written, the store, an unexpected server error",
    ),
    (
        USAGE,
        "bad usage or an invalid argument (a source, config or store to read that is not one), here or "
        "as the service judged it (INVALID_ARGUMENT)",
    ),
    (REJECTS, "ingest, prepare: finished, but some records were rejected (see the rejects report)"),
    (DENIED, "not authenticated or not permitted: no, a wrong or an unscoped token"),
    (NOT_FOUND, "a named record is not stored (NOT_FOUND)"),
    (UNAVAILABLE, "the service is unreachable, overloaded or past the deadline"),
)

# gRPC status name -> exit code; every other status is FAILED.
STATUS = {
    "INVALID_ARGUMENT": USAGE,
    "UNAUTHENTICATED": DENIED,
    "PERMISSION_DENIED": DENIED,
    "NOT_FOUND": NOT_FOUND,
    "UNAVAILABLE": UNAVAILABLE,
    "DEADLINE_EXCEEDED": UNAVAILABLE,
    "RESOURCE_EXHAUSTED": UNAVAILABLE,
}


def for_status(name: str) -> int:
    """The exit code of a call that failed with gRPC status ``name`` (e.g. ``"NOT_FOUND"``)."""
    return STATUS.get(name, FAILED)


def for_rpc_error(error: BaseException) -> int:
    """The exit code of a ``grpc.RpcError`` (read by duck typing: this module imports no grpc)."""
    code = getattr(error, "code", None)
    return for_status(code().name) if callable(code) else FAILED


def markdown() -> str:
    """The table as docs/commands.md shows it."""
    rows = "\n".join(f"| {code} | {meaning} |" for code, meaning in TABLE)
    return f"| exit | meaning |\n|---|---|\n{rows}\n"
