#!/bin/sh
# Image entrypoint: reads the Qdrant API key from the file named by ECGSEARCH_QDRANT_API_KEY_FILE (a mounted
# Secret) into ECGSEARCH_QDRANT_API_KEY, which `ecgsearch serve` and `ecgsearch ingest` read, then runs the
# command. Keeps the key out of pod specs, compose files and `docker inspect`.
set -eu
if [ -n "${ECGSEARCH_QDRANT_API_KEY_FILE:-}" ]; then
    if [ -n "${ECGSEARCH_QDRANT_API_KEY:-}" ]; then
        echo "ecgsearch-entrypoint: set ECGSEARCH_QDRANT_API_KEY or ECGSEARCH_QDRANT_API_KEY_FILE, not both" >&2
        exit 2
    fi
    if ! ECGSEARCH_QDRANT_API_KEY="$(cat -- "$ECGSEARCH_QDRANT_API_KEY_FILE")"; then
        echo "ecgsearch-entrypoint: cannot read ECGSEARCH_QDRANT_API_KEY_FILE=$ECGSEARCH_QDRANT_API_KEY_FILE" >&2
        exit 2
    fi
    if [ -z "$ECGSEARCH_QDRANT_API_KEY" ]; then
        echo "ecgsearch-entrypoint: ECGSEARCH_QDRANT_API_KEY_FILE=$ECGSEARCH_QDRANT_API_KEY_FILE is empty" >&2
        exit 2
    fi
    export ECGSEARCH_QDRANT_API_KEY
    unset ECGSEARCH_QDRANT_API_KEY_FILE
fi
exec "$@"
