#!/usr/bin/env bash
# Debian packages the toolkit's tests and tools use beyond Python, all in one list: the adb client and
# mksh (Android's shell) for the bench engine, a C++ toolchain, xxhash and JSON headers for the native
# runner, a JDK, JUnit and org.json for the Java reader tests, aapt/zipalign/framework-res for the APK
# checks. `make system-deps` runs it (as root, or with sudo); `make test` never installs anything.
# Idempotent: installs only what is missing.
set -euo pipefail
PACKAGES=(adb mksh cmake g++ libxxhash-dev nlohmann-json3-dev
          openjdk-17-jdk-headless junit5 libandroid-json-java
          aapt zipalign apksigner dexdump android-framework-res
          valgrind   # valgrind: benchmarks/bench_overhead.py counts instructions with callgrind
          gcc g++-aarch64-linux-gnu qemu-user)  # the aarch64 runner: cross_aarch64.sh, qemu-user (+ its plugin)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "system_deps: installing ${missing[*]} from Debian"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
