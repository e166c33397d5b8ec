"""What the viewer tells a person when the service says no: one sentence and an HTTP status per gRPC code.

Messages repeat the service's own details (which name fields and record ids, never personal data)
and the target the viewer talks to; no traceback reaches the page.
"""

from __future__ import annotations

import grpc

from ecgsearch.search.client import bad_request


def describe_rpc_error(error: grpc.RpcError, target: str) -> tuple[int, str]:
    """(HTTP status, message) for a failed call to the service at ``target``."""
    code = error.code()
    details = (error.details() or "").strip()
    if code == grpc.StatusCode.UNAVAILABLE:
        return 503, (
            f"The search service at {target} is not reachable. Is `ecgsearch serve` running there? "
            "Check --target."
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return 502, (
            f"The search service at {target} refused this viewer's credentials ({code.name}). "
            "Check the token file (--token-file or ECGSEARCH_TOKEN)."
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        fields = "; ".join(f"{field}: {why}" for field, why in _violations(error))
        return 400, f"The service rejected the search: {fields or details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return 404, f"Not in the collection: {details}" if details else "Not in the collection."
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return 409, f"The service cannot do this now: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return 504, f"The search service at {target} did not answer in time."
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return 503, f"The search service at {target} is busy or the request is too large: {details}"
    return 502, f"The search service failed ({code.name}): {details[:200]}"


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    try:
        return bad_request(error)
    except Exception:  # a status without (or with unreadable) details: fall back to the message
        return []
