#!/bin/sh
# Makes deploy/secrets/ for compose.yaml once: Qdrant's admin and read-only API keys, Qdrant's local.yaml
# holding both, the site secret that keys patient pseudonyms, and one random bearer token for the search service
# (client-token) with the callers file that names it by its SHA-256 only (tokens), and the viewer's own token
# (viewer-token, caller "viewer" with scope search; added to an existing callers file on a rerun). Keeps existing
# files (rerun-safe). The directory is private (0700); the files the containers read are 0644 so the
# containers' non-root users can read their bind-mounted copies.
set -eu
dir="${1:-$(dirname "$0")/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
new_key() { [ -s "$1" ] || { openssl rand -hex 32 > "$1"; chmod 644 "$1"; }; }
new_key "$dir/qdrant-admin-key"
new_key "$dir/qdrant-read-only-key"
new_key "$dir/site-secret"  # keys patient pseudonyms (HMAC): keep it for every later ingest of the site
if [ ! -s "$dir/qdrant-local.yaml" ]; then
    printf 'service:\n  api_key: %s\n  read_only_api_key: %s\n' \
        "$(cat "$dir/qdrant-admin-key")" "$(cat "$dir/qdrant-read-only-key")" > "$dir/qdrant-local.yaml"
    chmod 644 "$dir/qdrant-local.yaml"
fi
if [ ! -s "$dir/tokens" ]; then
    # The callers file read through ECGSEARCH_TOKENS_FILE (format: docs/deploy.md): one caller "search-client"
    # with scope search on every site, named by its token's SHA-256; the token itself stays in client-token.
    [ -s "$dir/client-token" ] || { openssl rand -hex 24 > "$dir/client-token"; chmod 600 "$dir/client-token"; }
    digest=$(tr -d '\n' < "$dir/client-token" | openssl dgst -sha256 -r | cut -d' ' -f1)
    printf '# caller  scopes  sites  credential\nsearch-client  search  *  sha256:%s\n' "$digest" > "$dir/tokens"
    chmod 644 "$dir/tokens"
fi
# The viewer's token: read by the web container, so 0644 like the other mounted files.
[ -s "$dir/viewer-token" ] || { openssl rand -hex 24 > "$dir/viewer-token"; chmod 644 "$dir/viewer-token"; }
if ! grep -q '^viewer ' "$dir/tokens"; then
    digest=$(tr -d '\n' < "$dir/viewer-token" | openssl dgst -sha256 -r | cut -d' ' -f1)
    printf 'viewer  search  *  sha256:%s\n' "$digest" >> "$dir/tokens"
fi
echo "secrets in $dir; clients send: authorization: Bearer <the token in $dir/client-token>"
