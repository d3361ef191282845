"""Place a verified bundle where the Android and iOS builds expect it (`meki bundle`).

Android: `app/src/main/assets/meki/` (base APK) or, above `base_limit_bytes`, an asset-pack module
`meki_assets/` (install-time or fast-follow), plus `meki-bundle.properties`, which the Gradle
scripts read (noCompress extensions, asset pack). iOS: a local SwiftPM package `MekiAssets` whose
resources are the bundle folder, copied verbatim. A bundle whose manifest, sha256 or pack header
does not verify is refused (contract.manifest.BundleError) before anything is written.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from contract import bundle_rules
from contract.atomic import atomic_dir, atomic_write_text
from contract.manifest import MANIFEST, BundleError, Manifest
from mobile_runtime.bundle_pack import verify_bundle_and_pack

ANDROID_ASSET_DIR = "meki"                 # assets/meki/ (AndroidBundle.ASSET_ROOT)
ASSET_PACK = "meki_assets"                 # asset-pack module and pack name
BASE_LIMIT_BYTES = 150 << 20               # keep the base APK under Play's 200 MB download cap
DELIVERY_TYPES = ("install-time", "fast-follow")
IOS_PACKAGE = "MekiAssets"
IOS_BUNDLE_DIR = "MekiBundle"              # Bundle.module resource folder name


@dataclass
class AndroidPlacement:
    assets_dir: Path          # folder holding manifest.json and the bundle's files
    asset_pack: str | None    # asset-pack module name, or None for the base APK
    delivery: str | None      # install-time | fast-follow (asset pack only)
    no_compress: list[str]    # extensions stored uncompressed
    total_bytes: int


@dataclass
class IosPlacement:
    package_dir: Path         # the MekiAssets SwiftPM package (add it as a local package)
    bundle_dir: Path          # its Sources/MekiAssets/MekiBundle resource folder


def verify_for_apps(bundle: Path) -> Manifest:
    """verify_bundle (schema, paths, no symlinks, sizes, sha256, fingerprints) plus the pack header
    against the manifest; the error carries its conformance/CHECKS.md name (`check`)."""
    return verify_bundle_and_pack(Path(bundle), check_hashes=True)


def _no_compress(m: Manifest) -> list[str]:
    """Extensions the APK must store uncompressed: the pack (mapped in place) and the programs."""
    files = [b.file for b in m.backbones] + ([m.memory_pack.file] if m.memory_pack else [])
    exts = {Path(f).suffix.lstrip(".") for f in files if Path(f).suffix}
    missing = [f for f in files if not Path(f).suffix]
    if missing:
        raise BundleError(f"cannot mark {missing} uncompressed: noCompress matches file extensions")
    return sorted(exts)


def _copy_bundle(bundle: Path, m: Manifest, dest: Path, overwrite: bool) -> None:
    """Copy manifest.json and every listed file into dest atomically (temp folder, then rename)."""
    with atomic_dir(dest, overwrite) as tmp:
        for rel in [MANIFEST] + [f.path for f in m.files]:
            try:   # verified above; checked again at copy time so a link swapped in since is refused
                bundle_rules.lstat_inside(bundle, rel)
            except bundle_rules.RuleError as e:
                raise BundleError(f"{bundle}: {e}", e.check) from None
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle / rel, tmp / rel, follow_symlinks=False)


def bundle_android(bundle: Path, app_dir: Path, *, base_limit_bytes: int = BASE_LIMIT_BYTES,
                   delivery: str = "install-time", overwrite: bool = False) -> AndroidPlacement:
    """Verify `bundle` and place it in the Gradle project `app_dir` (android_app/).

    Up to base_limit_bytes: app/src/main/assets/meki/. Larger: the asset-pack module meki_assets/
    (delivery install-time or fast-follow), which settings.gradle.kts and app/build.gradle.kts pick
    up. Writes meki-bundle.properties (noCompress extensions). Raises BundleError, FileExistsError.
    """
    bundle, app_dir = Path(bundle), Path(app_dir)
    if delivery not in DELIVERY_TYPES:
        raise ValueError(f"unknown delivery {delivery!r}; valid: {', '.join(DELIVERY_TYPES)}")
    if not (app_dir / "settings.gradle.kts").is_file() or not (app_dir / "app").is_dir():
        raise FileNotFoundError(f"{app_dir}: not the android_app Gradle project (no settings.gradle.kts or app/)")
    m = verify_for_apps(bundle)
    total = sum(f.bytes for f in m.files) + (bundle / MANIFEST).stat().st_size
    use_pack = total > base_limit_bytes
    base_dest = app_dir / "app/src/main/assets" / ANDROID_ASSET_DIR
    pack_module = app_dir / ASSET_PACK
    dest = (pack_module / "src/main/assets" / ANDROID_ASSET_DIR) if use_pack else base_dest
    stale = base_dest if use_pack else pack_module      # the other location must not hold an old bundle
    if stale.exists() and not overwrite:
        raise FileExistsError(f"{stale} holds a bundle; pass overwrite=True to move it")
    _copy_bundle(bundle, m, dest, overwrite)
    if stale.exists():
        shutil.rmtree(stale)
    if use_pack:
        atomic_write_text(pack_module / "build.gradle.kts", _asset_pack_gradle(delivery))
    exts = _no_compress(m)
    atomic_write_text(app_dir / "meki-bundle.properties",
                  f"# written by meki bundle; read by app/build.gradle.kts\nname={m.name}\n"
                  f"fingerprint={m.fingerprint}\nnoCompress={','.join(exts)}\n"
                  f"assetPack={ASSET_PACK if use_pack else ''}\n")
    return AndroidPlacement(dest, ASSET_PACK if use_pack else None, delivery if use_pack else None, exts, total)


def _asset_pack_gradle(delivery: str) -> str:
    return (f'// written by meki bundle: the MeKi bundle as a Play Asset Delivery pack ({delivery})\n'
            f'plugins {{ id("com.android.asset-pack") }}\n\n'
            f'assetPack {{\n    packName.set("{ASSET_PACK}")\n'
            f'    dynamicDelivery {{ deliveryType.set("{delivery}") }}\n}}\n')


def bundle_ios(bundle: Path, dest: Path, *, overwrite: bool = False) -> IosPlacement:
    """Verify `bundle` and write the local SwiftPM package dest/ (MekiAssets) holding it as a resource.

    An app adds dest as a local package and reads `MekiAssets.bundleURL` (a folder with manifest.json).
    Core ML programs (.mlpackage folders) are copied as they are listed, file by file.
    """
    bundle, dest = Path(bundle), Path(dest)
    m = verify_for_apps(bundle)
    src_dir = dest / "Sources" / IOS_PACKAGE
    _copy_bundle(bundle, m, src_dir / IOS_BUNDLE_DIR, overwrite)
    atomic_write_text(dest / "Package.swift", _ios_package_swift())
    atomic_write_text(src_dir / f"{IOS_PACKAGE}.swift",
                  "import Foundation\n\n/// The MeKi bundle copied here by `meki bundle --ios`.\n"
                  f"public enum {IOS_PACKAGE} {{\n"
                  "    /// Folder holding manifest.json and the bundle's files.\n"
                  "    public static var bundleURL: URL {\n"
                  f'        Bundle.module.url(forResource: "{IOS_BUNDLE_DIR}", withExtension: nil)!\n'
                  "    }\n}\n")
    return IosPlacement(dest, src_dir / IOS_BUNDLE_DIR)


def _ios_package_swift() -> str:
    return ("// swift-tools-version:5.9\n// written by meki bundle: the MeKi bundle as a resource package\n"
            "import PackageDescription\n\n"
            "let package = Package(\n"
            f'    name: "{IOS_PACKAGE}",\n'
            "    platforms: [.iOS(.v17), .macOS(.v14)],\n"
            f'    products: [.library(name: "{IOS_PACKAGE}", targets: ["{IOS_PACKAGE}"])],\n'
            f'    targets: [.target(name: "{IOS_PACKAGE}", resources: [.copy("{IOS_BUNDLE_DIR}")])]\n'
            ")\n")
