# Sourced by scripts/book.sh and scripts/test.sh: create the environment if missing, install the
# pinned requirements (again only when requirements.txt changed), and prepare the offline CIFAR-10
# copy from ../shared/data when that folder exists. Idempotent; says what it does.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.memgeo-requirements.sha256
want="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing requirements.txt into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
else
  echo "[setup] .venv is up to date"
fi
export PATH="$ROOT/.venv/bin:$PATH"
SHARED="$ROOT/../shared/data"
if [ ! -f data/cifar-10-batches-py/test_batch ] && [ -f "$SHARED/make_cifar10_batches.py" ]; then
  echo "[setup] building the offline CIFAR-10 copy from $SHARED into data/ (about 15 s)"
  mkdir -p data
  .venv/bin/python "$SHARED/make_cifar10_batches.py" data
  echo "JPEG-recompressed offline copy from ../shared/data: not the official pixels" > data/cifar-10-batches-py/OFFLINE_JPEG_COPY
fi
# The offline copy fails torchvision's md5 check on purpose; it is used only through this explicit
# option, and every figure made from it says so.
MEMGEO_DATA_ARGS=()
if [ -f data/cifar-10-batches-py/OFFLINE_JPEG_COPY ]; then
  echo "[setup] data: the offline JPEG-recompressed CIFAR-10 copy (unverified_local_copy=true); users get the official files"
  MEMGEO_DATA_ARGS=(--set unverified_local_copy=true)
  export MEMGEO_SET_DATA='{"unverified_local_copy": true}'
fi
