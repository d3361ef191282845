#!/usr/bin/env bash
# Compile the platform-independent part of meki-runtime (src/core, no Android imports) with the JDK
# and run its JUnit 5 tests against the conformance corpus (conformance/index.json, golden packs, XXH3 vectors) and a bundle written by the Python manifest writer.
# JUnit and org.json come from Debian (junit5, libandroid-json-java): installed here if missing.
# Also installs aapt, zipalign, android-framework-res for tests/test_bundle_apps.py's APK check.
# Closing line: "jvm: N passed, N failed[, N skipped]". Usage: android_app/scripts/jvm_test.sh
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$APP/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
JUNIT=/usr/share/java/junit-platform-console-standalone.jar
JSON=/usr/share/java/com.android.json.jar

need=()
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
[ -f "$JUNIT" ] || need+=(junit5)
[ -f "$JSON" ] || need+=(libandroid-json-java)
# for tests/test_bundle_apps.py's APK check (aapt + zipalign + framework-res.apk); run this script before pytest
command -v aapt >/dev/null || need+=(aapt)
command -v zipalign >/dev/null || need+=(zipalign)
[ -f /usr/share/android-framework-res/framework-res.apk ] || need+=(android-framework-res)
if [ ${#need[@]} -gt 0 ]; then
    echo "jvm_test: installing ${need[*]} from Debian"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
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
java -Dmeki.golden="$ROOT/conformance/golden" -Dmeki.conformance="$ROOT/conformance" -Dmeki.bundle="$OUT/bundle" -jar "$JUNIT" \
    -cp "$OUT/core:$OUT/test:$JSON" --scan-classpath "$OUT/test" --disable-banner --disable-ansi-colors \
    --details=tree > "$OUT/junit.txt" 2>&1
rc=$?
set -e
cat "$OUT/junit.txt"
count() { sed -n "s/^\[ *\([0-9]*\) tests $1 *\]$/\1/p" "$OUT/junit.txt"; }
passed=$(count successful); failed=$(count failed); skipped=$(count skipped)
echo "jvm: ${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
if [ "$rc" -ne 0 ] || [ "${passed:-0}" -eq 0 ]; then exit 1; fi
