#!/usr/bin/env bash
# Host build of the native runner against the executorch wheel in the repo's .venv. Idempotent:
# installs the Debian packages it needs if missing, reconfigures only when needed, builds with -j2.
#   mobile_runtime/native/build.sh [BUILD_DIR]     (default: build/native; prints the dir last)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BUILD="${1:-$REPO/build/native}"
PY="${PYTHON:-$REPO/.venv/bin/python}"

# shellcheck source=debian_packages.sh
. "$HERE/debian_packages.sh"
ensure_debian_packages build.sh cmake g++ libxxhash-dev nlohmann-json3-dev

ET_ROOT="$("$PY" -c 'import executorch; print(list(executorch.__path__)[0])')"
if [ ! -f "$ET_ROOT/share/cmake/executorch-config.cmake" ]; then
    echo "build.sh: $ET_ROOT has no share/cmake/executorch-config.cmake (needs the executorch wheel >= 1.5)" >&2
    exit 1
fi
mkdir -p "$BUILD"
exec 9>"$BUILD/.build.lock"
flock 9  # parallel test workers (pytest -n 2) may ask for the same build folder at once
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "EXECUTORCH_ROOT:PATH=$ET_ROOT\$" "$BUILD/CMakeCache.txt"; then
    cmake -S "$HERE" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEXECUTORCH_ROOT="$ET_ROOT" >&2
fi
nice cmake --build "$BUILD" -j2 >&2
echo "$BUILD"
