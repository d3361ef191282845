"""meki bundle for apps: placement, Gradle/SwiftPM settings, refusals, and a Debian-built APK whose
memory pack is stored uncompressed and 16 KiB-aligned (what the app maps in place)."""
import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from contract.manifest import (Backbone, BundleError, Manifest, MethodSpec, PackRef, TensorSpec, TokenizerRef,
                                     write_manifest)
from pipeline import bundle_apps
from tests.support import apps

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "conformance/golden"
FP = "0123456789abcdef00112233445566ff"   # the golden packs' fingerprint


def make_bundle(root: Path) -> Path:
    """A bundle around the golden int8 pack (V=100, L=3, m=16), manifest by the Python writer."""
    root.mkdir()
    shutil.copyfile(GOLDEN / "golden_int8_token.mekipack", root / "tables.mekipack")
    (root / "model.pte").write_bytes(b"\x00" * 1000)
    (root / "tokenizer.json").write_text("{}")
    rows = lambda t: [TensorSpec("tokens", [1, t], "int64"), TensorSpec("input_pos", [t], "int64"),  # noqa: E731
                      TensorSpec("meki_rows", [1, t, 3, 16], "float32")]
    out = [TensorSpec("logits", [1, 100], "float32")]
    bb = Backbone("executorch-xnnpack", "model.pte", "none", 16, 4, "internal",
                  {"prefill": MethodSpec(rows(4), out, "prefill"), "decode": MethodSpec(rows(1), out, "decode")})
    write_manifest(root, Manifest(name="t", fingerprint=FP, memory="both", config={},
                                  tokenizer=TokenizerRef("tokenizer.json", [99]),
                                  memory_pack=PackRef("tables.mekipack", "int8", "token-major", 100, 3, 16, FP),
                                  backbones=[bb]))
    return root


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "bundle")


@pytest.fixture
def app(tmp_path):
    """A copy of android_app's Gradle skeleton (settings + app/), so the real one stays clean."""
    dst = tmp_path / "android_app"
    (dst / "app").mkdir(parents=True)
    shutil.copyfile(ROOT / "android_app/settings.gradle.kts", dst / "settings.gradle.kts")
    shutil.copyfile(ROOT / "android_app/app/build.gradle.kts", dst / "app/build.gradle.kts")
    return dst


def data_offset(apk: Path, info: zipfile.ZipInfo) -> int:
    """Offset of an entry's bytes: local header (30 bytes) + name + extra field."""
    with open(apk, "rb") as fh:
        fh.seek(info.header_offset)
        head = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def test_android_base_apk_layout(bundle, app):
    placed = bundle_apps.bundle_android(bundle, app)
    assert placed.asset_pack is None and placed.assets_dir == app / "app/src/main/assets/meki"
    for f in ("manifest.json", "tables.mekipack", "model.pte", "tokenizer.json"):
        assert (placed.assets_dir / f).read_bytes() == (bundle / f).read_bytes()
    props = (app / "meki-bundle.properties").read_text()
    assert "noCompress=mekipack,pte" in props and f"fingerprint={FP}" in props and "assetPack=\n" in props
    assert not (app / "meki_assets").exists()
    with pytest.raises(FileExistsError):
        bundle_apps.bundle_android(bundle, app)                 # never overwrites unless told
    bundle_apps.bundle_android(bundle, app, overwrite=True)


def test_android_asset_pack_when_too_large(bundle, app):
    bundle_apps.bundle_android(bundle, app)
    with pytest.raises(FileExistsError, match="holds a bundle"):
        bundle_apps.bundle_android(bundle, app, base_limit_bytes=1000, delivery="fast-follow")
    placed = bundle_apps.bundle_android(bundle, app, base_limit_bytes=1000, delivery="fast-follow", overwrite=True)
    assert placed.asset_pack == "meki_assets" and placed.delivery == "fast-follow"
    assert placed.assets_dir == app / "meki_assets/src/main/assets/meki"
    gradle = (app / "meki_assets/build.gradle.kts").read_text()
    assert 'id("com.android.asset-pack")' in gradle and 'deliveryType.set("fast-follow")' in gradle
    assert not (app / "app/src/main/assets/meki").exists()   # moved, not duplicated
    # the checked-in Gradle scripts include the module and the pack when the module exists
    assert 'include(":meki_assets")' in (app / "settings.gradle.kts").read_text()
    assert 'assetPacks += listOf(":meki_assets")' in (app / "app/build.gradle.kts").read_text()
    with pytest.raises(ValueError, match="install-time, fast-follow"):
        bundle_apps.bundle_android(bundle, app, delivery="on-demand", overwrite=True)


@pytest.mark.parametrize("damage,msg", [
    (lambda b: (b / "model.pte").write_bytes(b"\x01" * 1000), "model.pte: sha256"),
    (lambda b: (b / "tables.mekipack").unlink(), "tables.mekipack: missing"),
    (lambda b: (b / "manifest.json").write_text("{}"), "schema"),
])
def test_refuses_unverified_bundles_before_writing(bundle, app, tmp_path, damage, msg):
    damage(bundle)
    with pytest.raises(BundleError, match=msg):
        bundle_apps.bundle_android(bundle, app)
    with pytest.raises(BundleError, match=msg):
        bundle_apps.bundle_ios(bundle, tmp_path / "ios")
    assert not (app / "app/src/main/assets/meki").exists() and not (tmp_path / "ios").exists()


def _link_tokenizer_to_passwd(b: Path) -> None:
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").symlink_to("/etc/passwd")


def _dotdot_pack(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["memory_pack"]["file"] = "../outside/tables.mekipack"
    (b / "manifest.json").write_text(json.dumps(m))


def _abs_file(b: Path) -> None:
    m = json.loads((b / "manifest.json").read_text())
    m["files"].append({**m["files"][0], "path": "/etc/passwd"})
    (b / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage,check", [(_link_tokenizer_to_passwd, "bundle.symlink"), (_dotdot_pack, "manifest.path"),
                                          (_abs_file, "manifest.path")])
def test_refuses_paths_that_leave_the_bundle(bundle, app, tmp_path, damage, check):
    """Issue 12, class 3: nothing outside the bundle is copied into the APK assets or the Swift package."""
    damage(bundle)
    for make in (lambda: bundle_apps.bundle_android(bundle, app), lambda: bundle_apps.bundle_ios(bundle, tmp_path / "ios")):
        with pytest.raises(BundleError) as e:
            make()
        assert e.value.check == check
    assert not (app / "app/src/main/assets/meki").exists() and not (tmp_path / "ios").exists()


def test_manifest_writer_refuses_symlinks(bundle):
    from contract.manifest import load_manifest, write_manifest
    _link_tokenizer_to_passwd(bundle)
    with pytest.raises(BundleError, match="symbolic links") as e:
        write_manifest(bundle, load_manifest(bundle))
    assert e.value.check == "bundle.symlink"


def test_refuses_pack_whose_header_disagrees(bundle, app):
    m = json.loads((bundle / "manifest.json").read_text())
    m["memory_pack"]["d_mem"] = 8                             # the pack's header says 16; files still verify
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="memory pack tables.mekipack: header"):
        bundle_apps.bundle_android(bundle, app)


def test_ios_package_layout(bundle, tmp_path):
    placed = bundle_apps.bundle_ios(bundle, tmp_path / "MekiAssets")
    assert placed.bundle_dir == tmp_path / "MekiAssets/Sources/MekiAssets/MekiBundle"
    assert (placed.bundle_dir / "tables.mekipack").read_bytes() == (bundle / "tables.mekipack").read_bytes()
    pkg = (tmp_path / "MekiAssets/Package.swift").read_text()
    assert '.copy("MekiBundle")' in pkg and "swift-tools-version:5.9" in pkg
    assert "Bundle.module.url" in (tmp_path / "MekiAssets/Sources/MekiAssets/MekiAssets.swift").read_text()


def test_golden_copied_for_swift_tests(tmp_path):
    dest = apps.copy_golden_ios(GOLDEN, tmp_path / "ios_bridge")
    assert (dest / "pack_golden.json").read_bytes() == (GOLDEN / "pack_golden.json").read_bytes()
    assert len(list(dest.glob("*.mekipack"))) == 5


@pytest.mark.skipif(shutil.which("aapt") is None or not apps.FRAMEWORK_RES.exists(),
                    reason="Debian aapt/android-framework-res not installed (see android_app/README.md)")
def test_apk_stores_the_pack_uncompressed_and_16k_aligned(bundle, app, tmp_path):
    placed = bundle_apps.bundle_android(bundle, app)
    apk = apps.assemble_test_apk(placed.assets_dir.parent, tmp_path / "check.apk",
                                        no_compress=placed.no_compress)
    with zipfile.ZipFile(apk) as z:
        info = z.getinfo("assets/meki/tables.mekipack")
        assert info.compress_type == zipfile.ZIP_STORED
        off = data_offset(apk, info)
        assert off % 16384 == 0
        assert z.getinfo("assets/meki/model.pte").compress_type == zipfile.ZIP_STORED
    # the stored bytes at that offset are the pack itself: what AssetFileDescriptor maps
    raw = apk.read_bytes()[off:off + info.file_size]
    assert raw == (bundle / "tables.mekipack").read_bytes()


def test_ios_keeps_a_package_of_the_users_own(bundle, tmp_path):
    dest = tmp_path / "MyPackage"
    (dest / "Sources").mkdir(parents=True)
    (dest / "Package.swift").write_text("// the user's own package\n")
    with pytest.raises(FileExistsError, match="Package.swift already exists and is not meki bundle's"):
        bundle_apps.bundle_ios(bundle, dest)
    assert (dest / "Package.swift").read_text() == "// the user's own package\n"
    assert not (dest / "Sources/MekiAssets").exists()
    bundle_apps.bundle_ios(bundle, dest, overwrite=True)
    assert "swift-tools-version" in (dest / "Package.swift").read_text()


def test_destination_inside_the_bundle_is_refused(bundle):
    with pytest.raises(ValueError, match="is inside the bundle"):
        bundle_apps.bundle_ios(bundle, bundle / "ios")
    assert not (bundle / "ios").exists()


def test_pack_with_a_damaged_block_is_not_shipped(bundle, app):
    """The header and table verify; a data block does not: the app would fail at its first lookup."""
    from mobile_runtime.pack import MemoryPack
    with MemoryPack.open(bundle / "tables.mekipack") as pack:
        at = pack.header.data_offset + 5
    raw = bytearray((bundle / "tables.mekipack").read_bytes())
    raw[at] ^= 0xFF
    (bundle / "tables.mekipack").write_bytes(bytes(raw))
    from contract.manifest import load_manifest
    write_manifest(bundle, load_manifest(bundle))     # the manifest's sha256 follows: only the block is bad
    with pytest.raises(BundleError) as e:
        bundle_apps.bundle_android(bundle, app)
    assert e.value.check == "pack.block_checksum" and not (app / "app/src/main/assets/meki").exists()


def test_properties_keep_a_hostile_name_one_value(bundle, app):
    """A manifest name with a newline, '=' or a trailing backslash must not add or swallow keys in
    meki-bundle.properties (java.util.Properties syntax; the Gradle scripts load it)."""
    from contract.manifest import load_manifest
    m = load_manifest(bundle)
    m.name = "evil\nassetPack=x=y\\"
    write_manifest(bundle, m)
    bundle_apps.bundle_android(bundle, app)
    lines = (app / "meki-bundle.properties").read_text().splitlines()
    assert lines[1] == "name=evil\\nassetPack\\=x\\=y\\\\" and lines[2].startswith("fingerprint=")
    assert [ln.split("=")[0] for ln in lines[1:]] == ["name", "fingerprint", "noCompress", "assetPack"]


def test_moving_out_of_the_asset_pack_keeps_the_users_files(bundle, app):
    bundle_apps.bundle_android(bundle, app, base_limit_bytes=1000)
    (app / "meki_assets/NOTES.md").write_text("mine\n")
    bundle_apps.bundle_android(bundle, app, overwrite=True)          # small enough for the base APK again
    assert (app / "app/src/main/assets/meki/manifest.json").exists()
    assert not (app / "meki_assets/src/main/assets/meki").exists()
    assert not (app / "meki_assets/build.gradle.kts").exists()       # the module is no longer included
    assert (app / "meki_assets/NOTES.md").read_text() == "mine\n"
    assert not list(app.rglob(".*partial*"))
