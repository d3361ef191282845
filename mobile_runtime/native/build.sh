#!/usr/bin/env bash
# Host build of the native runner against the executorch wheel in the repo's .venv. Idempotent:
# installs the Debian packages it needs if missing, reconfigures only when needed, builds with -j2.
#   mobile_runtime/native/build.sh [BUILD_DIR]     (default: build/native; prints the dir last)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BUILD="${1:-$REPO/build/native}"
PY="${PYTHON:-$REPO/.venv/bin/python}"

PACKAGES=(cmake g++ libxxhash-dev nlohmann-json3-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "build.sh: installing ${missing[*]} from Debian" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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
