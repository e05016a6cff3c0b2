#!/usr/bin/env bash
# Install what is needed and build the whole book (default preset: cpu). Extra arguments go to
# `python -m memgeo book`, e.g.:  bash scripts/book.sh --preset smoke --set eps=0.3
source "$(dirname "$0")/setup.sh"
echo "[book] python -m memgeo book ${MEMGEO_DATA_ARGS[*]} $*"
exec .venv/bin/python -m memgeo book "${MEMGEO_DATA_ARGS[@]}" "$@"
