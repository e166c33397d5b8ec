"""Container HEALTHCHECK: exit 0 when the local gRPC health service reports SERVING, 1 otherwise.

With a URL argument (the viewer: ``healthcheck.py http://127.0.0.1:8080/healthz``) it checks that the URL
answers 200 instead.

The image has no grpc_health_probe binary; grpcio and grpcio-health-checking are already installed.
Plaintext only: with ECGSEARCH_TLS_CERT set, disable the image HEALTHCHECK and probe from outside.
"""

import os
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check_url(url: str) -> int:
    """0 when ``url`` answers 200 within 3 s."""
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"health check on {url} failed: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"health check on {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    """Check the overall server status ('' service) on ECGSEARCH_PORT, or the URL given."""
    if len(sys.argv) > 1:
        return check_url(sys.argv[1])
    target = f"127.0.0.1:{os.environ.get('ECGSEARCH_PORT', '50051')}"
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as exc:
        print(f"health check on {target} failed: {exc.code().name}", file=sys.stderr)
        return 1
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(
            f"health check on {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
