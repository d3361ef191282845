#!/usr/bin/env bash
# Issue 12, class 1: the C++ readers under AddressSanitizer + UndefinedBehaviorSanitizer (g++), run
# over the golden packs and the whole conformance corpus, the shrink-while-mapped check, then a
# bounded seeded fuzz of the header/file/manifest parsers. Readers only: no ExecuTorch needed.
#   mobile_runtime/native/sanitize_test.sh [BUILD_DIR]     (default build/native-asan)
#   MEKI_FUZZ_SECONDS=60 (default), MEKI_FUZZ_SEED=1 (default)
# Prints "sanitize: ... s" per step and exits non-zero on any failure or sanitizer report.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BUILD="${1:-$REPO/build/native-asan}"
SECONDS_FUZZ="${MEKI_FUZZ_SECONDS:-60}"
SEED="${MEKI_FUZZ_SEED:-1}"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

step() { local t0=$SECONDS; "$@"; echo "sanitize: $(basename "$1") $((SECONDS - t0)) s" >&2; }

t_all=$SECONDS
mkdir -p "$BUILD"
[ -f "$BUILD/CMakeCache.txt" ] || cmake -S "$HERE" -B "$BUILD" -DMEKI_READERS_ONLY=ON -DMEKI_SANITIZE=ON \
    -DCMAKE_BUILD_TYPE=Debug >/dev/null
t0=$SECONDS
nice cmake --build "$BUILD" -j2 >/dev/null
echo "sanitize: build $((SECONDS - t0)) s" >&2

step "$BUILD/pack_golden_check" "$REPO/conformance/golden" >/dev/null
step "$BUILD/conformance_check" "$REPO/conformance" | tail -1
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp "$REPO/conformance/golden/golden_int8_token.mekipack" "$scratch/p.mekipack"
step "$BUILD/conformance_check" --shrink-while-mapped "$scratch/p.mekipack" >/dev/null
seeds=("$REPO"/conformance/golden/*.mekipack "$REPO"/conformance/packs/overflow_*.mekipack
       "$REPO"/conformance/bundles/ok_*/manifest.json "$REPO"/conformance/bundles/schema_*/manifest.json)
step "$BUILD/fuzz_pack" --seconds "$SECONDS_FUZZ" --seed "$SEED" "${seeds[@]}"
echo "sanitize: all steps $((SECONDS - t_all)) s" >&2
