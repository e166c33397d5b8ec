#!/bin/sh
# Makes deploy/secrets/ for compose.yaml once: Qdrant's admin and read-only API keys, Qdrant's local.yaml
# holding both, and one random bearer token for the search service. Keeps existing files (rerun-safe).
# The directory is private (0700); the files are 0644 so the containers' non-root users can read their
# bind-mounted copies.
set -eu
dir="${1:-$(dirname "$0")/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
new_key() { [ -s "$1" ] || { openssl rand -hex 32 > "$1"; chmod 644 "$1"; }; }
new_key "$dir/qdrant-admin-key"
new_key "$dir/qdrant-read-only-key"
if [ ! -s "$dir/qdrant-local.yaml" ]; then
    printf 'service:\n  api_key: %s\n  read_only_api_key: %s\n' \
        "$(cat "$dir/qdrant-admin-key")" "$(cat "$dir/qdrant-read-only-key")" > "$dir/qdrant-local.yaml"
    chmod 644 "$dir/qdrant-local.yaml"
fi
if [ ! -s "$dir/tokens" ]; then
    # The bearer tokens file read through ECGSEARCH_TOKENS_FILE (format: docs/deploy.md).
    openssl rand -hex 24 > "$dir/tokens"
    chmod 644 "$dir/tokens"
fi
echo "secrets in $dir; clients send: authorization: Bearer \$(head -n 1 $dir/tokens)"
