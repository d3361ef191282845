#!/usr/bin/env bash
# The Android platform jar and dexer that Debian ships, unpacked (not installed) into
# android_app/build/debian-sdk: android-sdk-platform-23 + libandroid-23-java (the real API 23
# android.jar with resources.arsc) and dalvik-exchange (dx 10.0.0). Bookworm has neither: they are
# fetched with apt-get download from bullseye (and sid, which still has the platform jar) through a
# private apt list, so the system's own sources stay as they are. Idempotent; prints the folder.
# Usage: android_app/scripts/debian_sdk.sh
set -euo pipefail
APP="$(cd "$(dirname "$0")/.." && pwd)"
SDK="$APP/build/debian-sdk"
JAR="$SDK/usr/share/java/com.android.android-23.jar"
DX="$SDK/usr/share/java/com.android.dx-10.0.0.jar"
if [ -f "$JAR" ] && [ -f "$DX" ]; then echo "$SDK"; exit 0; fi
APTDIR="$APP/build/debian-apt"
rm -rf "$APTDIR" && mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
# the machine's own Debian mirror (the first URIs of its apt sources), other suites of it
MIRROR=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[ -n "$MIRROR" ] || { echo "debian_sdk: no Debian mirror found in the apt sources" >&2; exit 1; }
printf 'deb %s bullseye main\ndeb %s sid main\n' "$MIRROR" "$MIRROR" > "$APTDIR/sources.list"
APT=(-o "Dir::Etc::sourcelist=$APTDIR/sources.list" -o Dir::Etc::sourceparts=/dev/null
     -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache" -o APT::Sandbox::User=root -qq)
apt-get "${APT[@]}" update
(cd "$APTDIR/debs" && apt-get "${APT[@]}" download android-sdk-platform-23 libandroid-23-java dalvik-exchange)
mkdir -p "$SDK"
for deb in "$APTDIR"/debs/*.deb; do dpkg-deb -x "$deb" "$SDK"; done
rm -rf "$APTDIR"
[ -f "$JAR" ] && [ -f "$DX" ] || { echo "debian_sdk: $JAR or $DX missing after unpacking" >&2; exit 1; }
echo "$SDK"
