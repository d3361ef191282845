"""Test-only app helpers: golden vectors into the Swift test resources, and a resource-only APK
assembled with Debian's aapt/zipalign to check the packaging rules where no Android Gradle plugin exists."""
import shutil
import subprocess
import tempfile
from pathlib import Path

FRAMEWORK_RES = Path("/usr/share/android-framework-res/framework-res.apk")   # Debian android-framework-res


def copy_golden_ios(golden_dir: Path, ios_dir: Path) -> Path:
    """Copy the memory-pack golden vectors (conformance/golden) into the Swift test resources."""
    dest = Path(ios_dir) / "Tests/MekiBridgeTests/Resources/golden"
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(golden_dir).iterdir()):
        if p.suffix in (".mekipack", ".json"):
            shutil.copyfile(p, dest / p.name)
    return dest


def assemble_test_apk(assets_root: Path, out_apk: Path, *, no_compress: list[str],
                      framework_res: Path = FRAMEWORK_RES, align: int = 16384) -> Path:
    """Resource-only APK of assets_root/ (holding meki/) with Debian's aapt, 16 KiB-aligned by zipalign.

    Proves the packaging rules (stored, aligned pack) where no modern AGP exists; unsigned.
    """
    for tool in ("aapt", "zipalign"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"{tool} not found: apt-get install aapt zipalign android-framework-res")
    out_apk = Path(out_apk)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "AndroidManifest.xml"
        manifest.write_text(
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="ai.meki.packcheck">\n'
            '    <uses-sdk android:minSdkVersion="26" android:targetSdkVersion="35" />\n'
            '    <application android:label="meki pack check" android:hasCode="false" />\n</manifest>\n')
        raw = Path(tmp) / "unaligned.apk"
        cmd = ["aapt", "package", "-f", "-M", str(manifest), "-I", str(framework_res), "-A", str(assets_root),
               "-F", str(raw)]
        for ext in no_compress:
            cmd[2:2] = ["-0", ext]
        subprocess.run(cmd, check=True, capture_output=True)
        subprocess.run(["zipalign", "-f", str(align), str(raw), str(out_apk)], check=True, capture_output=True)
    return out_apk
