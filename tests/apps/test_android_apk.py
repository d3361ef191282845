"""The app's APK built with Debian's tools only (android_app/scripts/debian_apk.sh): real android.jar,
dx, aapt, zipalign, apksigner. Checked the way a store or `adb install` would look at it.

Needs the Debian packages android_app/scripts/jvm_test.sh installs (aapt, zipalign, apksigner,
dexdump, a JDK) and the bullseye/sid android.jar + dx that scripts/debian_sdk.sh unpacks.
"""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "android_app"
TOOLS = ("aapt", "zipalign", "apksigner", "dexdump", "javac")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                 reason=f"needs {', '.join(TOOLS)}: run android_app/scripts/jvm_test.sh first")]


@pytest.fixture(scope="module")
def apk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apk")
    bundle = tmp / "assets" / "meki"
    subprocess.run([sys.executable, str(APP / "scripts" / "make_test_bundle.py"), str(bundle)], check=True,
                   capture_output=True)
    out = tmp / "meki.apk"
    subprocess.run(["bash", str(APP / "scripts" / "debian_apk.sh"), str(out), str(tmp / "assets")], check=True,
                   capture_output=True)
    return out


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_manifest_as_the_platform_reads_it(apk):
    badging = run("aapt", "dump", "badging", str(apk))
    assert "package: name='ai.meki.app' versionCode='1' versionName='0.1.0'" in badging
    assert "sdkVersion:'26'" in badging and "targetSdkVersion:'35'" in badging
    assert "launchable-activity: name='ai.meki.app.ChatActivity'" in badging


def test_signed_with_v2_and_v3(apk):
    out = run("apksigner", "verify", "--verbose", "--min-sdk-version", "26", str(apk))
    assert "Verified using v2 scheme (APK Signature Scheme v2): true" in out
    assert "Verified using v3 scheme (APK Signature Scheme v3): true" in out


def test_dex_holds_our_classes_only_and_runs_on_art(apk):
    dump = run("dexdump", "-d", str(apk))
    classes = set(re.findall(r"Class descriptor\s+: 'L([^;]+);'", dump))
    for c in ("ai/meki/app/BenchActivity", "ai/meki/app/Session", "ai/meki/runtime/android/LiteRTProgram",
              "ai/meki/runtime/android/ExecuTorchProgram", "ai/meki/runtime/IoCacheProgram", "ai/meki/runtime/RunStats"):
        assert c in classes, c
    stubs = sorted(c for c in classes if not c.startswith("ai/meki/"))
    assert stubs == [], f"stub or platform classes in the dex: {stubs[:5]}"
    # dx does not desugar lambdas; an invoke-custom would need LambdaMetafactory, which ART lacks
    assert "invoke-custom" not in dump


def test_bundle_pack_is_stored_and_16k_aligned(apk):
    with zipfile.ZipFile(apk) as z:
        info = z.getinfo("assets/meki/tables.mekipack")
        assert info.compress_type == zipfile.ZIP_STORED
        with apk.open("rb") as f:  # data offset = local header offset + 30 + name + extra
            f.seek(info.header_offset + 26)
            n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        assert (info.header_offset + 30 + n + m) % 16384 == 0
        assert z.getinfo("assets/meki/manifest.json").compress_type == zipfile.ZIP_DEFLATED
