#!/usr/bin/env bash
# Install what is needed and run the whole test suite: unit tests, then every book notebook
# executed by nbval with the smoke preset (converted from its jupytext text form).
source "$(dirname "$0")/setup.sh"
export MEMGEO_PRESET=smoke
export MEMGEO_SET="${MEMGEO_SET_DATA:-}"
export MEMGEO_RUNS_DIR="${MEMGEO_RUNS_DIR:-$ROOT/runs/ci}"
rm -rf .nbval && mkdir -p .nbval
notebooks=()
for nb in book/*.md; do
  if head -n 20 "$nb" | grep -q "format_name: myst"; then
    .venv/bin/jupytext --quiet --to ipynb -o ".nbval/$(basename "${nb%.md}").ipynb" "$nb"
    notebooks+=(".nbval/$(basename "${nb%.md}").ipynb")
  fi
done
echo "[test] pytest: unit tests + nbval on ${#notebooks[@]} notebook(s) with the smoke preset"
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "${notebooks[@]}" --nbval-lax --durations=15 "$@"
