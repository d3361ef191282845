#!/usr/bin/env bash
# Debian packages the test suite uses beyond Python: the adb client and mksh (Android's shell) for
# the harness tests, a C++ toolchain, xxhash and JSON headers for the native runner. Idempotent.
set -euo pipefail
PACKAGES=(adb mksh cmake g++ libxxhash-dev nlohmann-json3-dev)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "system_deps: installing ${missing[*]} from Debian"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
