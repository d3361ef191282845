#!/usr/bin/env bash
# Compile the platform-independent part of meki-runtime (src/core, no Android imports) with the JDK
# and run its JUnit 5 tests against the conformance corpus (conformance/index.json, golden packs, XXH3
# vectors) and a bundle written by the Python manifest writer; check the stats JSON they write against
# contract/stats.schema.json (tests/support/check_app_stats.py); compile the Android sources against
# Debian's real android.jar (scripts/stub_compile.sh).
# JUnit, org.json and the APK tools come from Debian: `make system-deps` installs them (this script installs nothing).
# Closing line: "jvm: N passed, N failed[, N skipped]". Usage: android_app/scripts/jvm_test.sh
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$APP/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
JUNIT=/usr/share/java/junit-platform-console-standalone.jar
JSON=/usr/share/java/com.android.json.jar

missing=()
command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
[ -f "$JUNIT" ] || missing+=(junit5)
[ -f "$JSON" ] || missing+=(libandroid-json-java)
if [ ${#missing[@]} -gt 0 ]; then
    echo "jvm_test: missing Debian packages ${missing[*]}: run 'make system-deps' (as root) first" >&2
    exit 2
fi

[ -x "$PY" ] || make -C "$ROOT" setup   # make_test_bundle.py uses the project's manifest writer
OUT="$APP/build/jvm"
rm -rf "$OUT" && mkdir -p "$OUT/core" "$OUT/test"
# core: Java 8 API surface (what Android's runtime offers at minSdk 26), no Android classes on the path
find "$APP/meki-runtime/src/core/java" -name '*.java' > "$OUT/core.txt"
javac -Xlint:all,-serial,-options -Werror --release 8 -cp "$JSON" -d "$OUT/core" @"$OUT/core.txt"
find "$APP/meki-runtime/src/test/java" -name '*.java' > "$OUT/test.txt"
javac -cp "$OUT/core:$JUNIT:$JSON" -d "$OUT/test" @"$OUT/test.txt"
[ -d "$APP/meki-runtime/src/test/resources" ] && cp -r "$APP/meki-runtime/src/test/resources/." "$OUT/test/"
"$APP/scripts/stub_compile.sh"
"$PY" "$APP/scripts/make_test_bundle.py" "$OUT/bundle" >/dev/null

set +e
java -Dmeki.golden="$ROOT/conformance/golden" -Dmeki.conformance="$ROOT/conformance" -Dmeki.bundle="$OUT/bundle" -Dmeki.statsOut="$OUT/stats" -jar "$JUNIT" \
    -cp "$OUT/core:$OUT/test:$JSON" --scan-classpath "$OUT/test" --disable-banner --disable-ansi-colors \
    --details=tree > "$OUT/junit.txt" 2>&1
rc=$?
set -e
cat "$OUT/junit.txt"
# the app's stats JSON (written by the tests above) read the way `meki bench --runner app` reads it
if ! "$PY" "$ROOT/tests/support/check_app_stats.py" "$OUT"/stats/*.json; then rc=1; fi
count() { sed -n "s/^\[ *\([0-9]*\) tests $1 *\]$/\1/p" "$OUT/junit.txt"; }
passed=$(count successful); failed=$(count failed); skipped=$(count skipped)
echo "jvm: ${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
if [ "$rc" -ne 0 ] || [ "${passed:-0}" -eq 0 ]; then exit 1; fi
