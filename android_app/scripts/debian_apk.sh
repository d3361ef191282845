#!/usr/bin/env bash
# Assemble and sign the app's APK with Debian's tools only: javac against the real android.jar
# (scripts/stub_compile.sh), dx (dalvik-exchange) -> classes.dex, aapt (manifest, assets), zipalign
# (16 KiB, so a stored pack's rows sit on page boundaries), apksigner (v2/v3, a debug key made here).
# The dex holds our classes only: ExecuTorch and LiteRT (their Java and native libraries) are not
# in Debian, so this APK installs and starts, but loading a backbone needs the Gradle build with
# the real AARs (android_app/README.md). It proves the manifest, the dex, the packaging rules and
# the signature on a machine without the Android SDK.
# Usage: android_app/scripts/debian_apk.sh OUT.apk [ASSETS_DIR]   (ASSETS_DIR holds meki/ to ship a bundle)
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
OUT_APK="$(realpath -m "$1")"
ASSETS="${2:-}"
for tool in aapt zipalign apksigner keytool; do
    command -v "$tool" >/dev/null || { echo "debian_apk: $tool not found: apt-get install aapt zipalign apksigner openjdk-17-jdk-headless" >&2; exit 1; }
done
SDK="$("$APP/scripts/debian_sdk.sh")"
ANDROID_JAR="$SDK/usr/share/java/com.android.android-23.jar"
DX="$SDK/usr/share/java/com.android.dx-10.0.0.jar"
"$APP/scripts/stub_compile.sh" >/dev/null
W="$APP/build/debian-apk"
rm -rf "$W/stage" && mkdir -p "$W/stage/dex"
# dx has no lambda desugaring: it would emit invoke-custom against LambdaMetafactory, which ART lacks.
# Our Android-side code therefore uses no lambdas; the test checks the dex has no invoke-custom.
java -jar "$DX" --dex --min-sdk-version=26 --output="$W/stage/dex/classes.dex" "$APP/build/android/classes"
# AGP takes the package from `namespace`; aapt needs it in the manifest itself
sed 's|<manifest xmlns:android="http://schemas.android.com/apk/res/android">|<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="ai.meki.app">|' \
    "$APP/app/src/main/AndroidManifest.xml" > "$W/stage/AndroidManifest.xml"
grep -q 'package="ai.meki.app"' "$W/stage/AndroidManifest.xml" || { echo "debian_apk: could not set the manifest's package" >&2; exit 1; }
cmd=(aapt package -f -M "$W/stage/AndroidManifest.xml" -I "$ANDROID_JAR" --min-sdk-version 26 --target-sdk-version 35
     --version-code 1 --version-name 0.1.0 -0 mekipack -0 mpk -0 pte -0 tflite -F "$W/stage/unaligned.apk")
[ -n "$ASSETS" ] && cmd+=(-A "$ASSETS")
"${cmd[@]}"
(cd "$W/stage/dex" && aapt add "$W/stage/unaligned.apk" classes.dex >/dev/null)
zipalign -f -p 16384 "$W/stage/unaligned.apk" "$W/stage/aligned.apk"
KS="$W/debug.keystore"
[ -f "$KS" ] || keytool -genkeypair -keystore "$KS" -storepass android -keypass android -alias meki-debug \
    -keyalg RSA -keysize 2048 -validity 10000 -dname "CN=MeKi debug" >/dev/null 2>&1
mkdir -p "$(dirname "$OUT_APK")"
apksigner sign --ks "$KS" --ks-pass pass:android --ks-key-alias meki-debug --min-sdk-version 26 \
    --out "$OUT_APK" "$W/stage/aligned.apk"
apksigner verify --min-sdk-version 26 "$OUT_APK"
echo "debian_apk: $OUT_APK ($(stat -c %s "$OUT_APK") bytes, signed)"
