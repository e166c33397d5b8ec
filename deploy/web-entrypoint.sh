#!/bin/sh
# Viewer entrypoint (the image's /usr/local/bin/ecgsearch-web): `ecgsearch web` on port 8080 of every address
# of the container, which only a deployment does: the viewer has no login of its own, so it runs behind an
# authenticating proxy (Kubernetes) or is published on the host's loopback only (compose). It reads
#   ECGSEARCH_TARGET          the search service, host:port
#   ECGSEARCH_TOKEN_FILE      the viewer's bearer token, a mounted secret file
#   ECGSEARCH_ALLOWED_HOSTS   the names users (or the proxy) reach it by, space-separated (Host check)
# Arguments are passed on (e.g. --tls --ca /path/ca.pem); a later --port replaces 8080.
# Liveness: GET /healthz; readiness (the search service answers its health check): GET /readyz.
set -eu
exec ecgsearch web --host 0.0.0.0 --port 8080 --allow-remote "$@"
