#!/usr/bin/env bash
# aarch64 Linux build of the native runner with Debian's cross compiler, against the aarch64 executorch
# wheel's shared libraries (the same version as the host venv's, downloaded with pip), plus the
# qemu-user instruction-count plugin (a host shared object). Idempotent, like build.sh.
#   mobile_runtime/native/cross_aarch64.sh [BUILD_DIR]    (default: build/native-aarch64; prints the dir last)
# Run the results with:  qemu-aarch64 -L /usr/aarch64-linux-gnu BUILD_DIR/meki_runner BUNDLE ...
# (the binaries carry an rpath to BUILD_DIR/wheel/executorch/lib).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BUILD="${1:-$REPO/build/native-aarch64}"
PY="${PYTHON:-$REPO/.venv/bin/python}"

# shellcheck source=debian_packages.sh
. "$HERE/debian_packages.sh"
ensure_debian_packages cross_aarch64.sh cmake g++ gcc g++-aarch64-linux-gnu qemu-user libxxhash-dev nlohmann-json3-dev

# The wheel: same executorch version as the exporter (a .pte and its runtime must match), the
# interpreter's own CPython tag, manylinux aarch64. Only lib/, include/ and share/ are unpacked.
ET_VERSION="$("$PY" -c 'from importlib.metadata import version; print(version("executorch"))')"
PY_TAG="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$BUILD/wheel"
ET_ROOT="$WHEEL_DIR/executorch"
STAMP="$WHEEL_DIR/.executorch-$ET_VERSION-cp$PY_TAG"
if [ ! -f "$STAMP" ]; then
    rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR/dl"
    "$PY" -m pip download --quiet "executorch==$ET_VERSION" --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 --python-version "$PY_TAG" \
        -d "$WHEEL_DIR/dl" >&2
    "$PY" - "$WHEEL_DIR" <<'EOF'
import sys, zipfile
from pathlib import Path
out = Path(sys.argv[1])
(whl,) = (out / "dl").glob("executorch-*aarch64.whl")
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.startswith(("executorch/lib/", "executorch/include/", "executorch/share/"))]
    z.extractall(out, names)
for so in (out / "executorch" / "lib").glob("*.so"):
    so.chmod(0o755)
EOF
    rm -rf "$WHEEL_DIR/dl"
    touch "$STAMP"
fi

mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "EXECUTORCH_ROOT:PATH=$ET_ROOT\$" "$BUILD/CMakeCache.txt"; then
    cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEXECUTORCH_ROOT="$ET_ROOT" \
          -DCMAKE_TOOLCHAIN_FILE="$HERE/aarch64-linux-gnu.cmake" >&2
fi
nice cmake --build "$BUILD" -j2 --target meki_runner step_bench >&2
# qemu's TCG plugin runs in the (x86) emulator process: host compiler
if [ ! -f "$BUILD/libqemu_insn_phases.so" ] || [ "$HERE/qemu_insn_phases.c" -nt "$BUILD/libqemu_insn_phases.so" ]; then
    gcc -shared -fPIC -O2 -Wall -fvisibility=hidden -o "$BUILD/libqemu_insn_phases.so" "$HERE/qemu_insn_phases.c"
fi
echo "$BUILD"
