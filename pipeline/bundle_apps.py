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
from contract.atomic import atomic_dir, atomic_write_text, temp_sibling
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


def verify_for_apps(bundle: Path, dest: Path) -> Manifest:
    """verify_bundle (schema, paths, no symlinks, sizes, sha256, fingerprints) plus the pack header
    against the manifest and every pack block against its checksum; the error carries its
    conformance/CHECKS.md name (`check`). dest must not lie inside the bundle (it would change it)."""
    bundle = Path(bundle)
    inside = Path(dest).resolve()
    if inside == bundle.resolve() or bundle.resolve() in inside.parents:
        raise ValueError(f"{dest} is inside the bundle {bundle}: place the bundle outside it")
    return verify_bundle_and_pack(bundle, check_hashes=True, every_block=True)


def properties_value(text: str) -> str:
    """`text` as a java.util.Properties value that loads back as itself: a newline or a trailing
    backslash in a bundle's name must not add or swallow keys in meki-bundle.properties."""
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[ch])
        elif ch in "=:#!" or (ch == " " and i == 0):
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:  # \uXXXX per UTF-16 unit (Properties reads Latin-1 text)
            units = ch.encode("utf-16-be", "surrogatepass")
            out += [f"\\u{int.from_bytes(units[j:j + 2], 'big'):04x}" for j in range(0, len(units), 2)]
    return "".join(out)


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
    m = verify_for_apps(bundle, app_dir)
    total = sum(f.bytes for f in m.files) + (bundle / MANIFEST).stat().st_size
    use_pack = total > base_limit_bytes
    base_dest = app_dir / "app/src/main/assets" / ANDROID_ASSET_DIR
    pack_module = app_dir / ASSET_PACK
    pack_assets = pack_module / "src/main/assets" / ANDROID_ASSET_DIR
    dest = pack_assets if use_pack else base_dest
    stale = base_dest if use_pack else pack_assets      # the other location must not hold an old bundle
    if (stale.exists() or stale.is_symlink()) and not overwrite:
        raise FileExistsError(f"{stale} holds a bundle; pass --overwrite to move it")
    exts = _no_compress(m)
    properties = (f"# written by meki bundle; read by app/build.gradle.kts\nname={properties_value(m.name)}\n"
                  f"fingerprint={m.fingerprint}\nnoCompress={','.join(exts)}\n"
                  f"assetPack={ASSET_PACK if use_pack else ''}\n")  # made first: nothing is written if it fails
    _copy_bundle(bundle, m, dest, overwrite)
    if use_pack:
        atomic_write_text(pack_module / "build.gradle.kts", _asset_pack_gradle(delivery))
    atomic_write_text(app_dir / "meki-bundle.properties", properties)
    if stale.exists() or stale.is_symlink():  # last, and only what meki bundle placed there
        _remove_placed(stale, pack_module if not use_pack else None)
    return AndroidPlacement(dest, ASSET_PACK if use_pack else None, delivery if use_pack else None, exts, total)


def _remove_placed(assets: Path, pack_module: Path | None) -> None:
    """Remove an old placement: renamed away first (one step), so a kill never leaves a half-deleted
    folder that still holds a manifest.json; the asset-pack module's build script goes with its assets,
    the user's other files in the module stay."""
    gone = temp_sibling(assets)
    assets.rename(gone)
    if gone.is_symlink():
        gone.unlink()
    else:
        shutil.rmtree(gone)
    if pack_module is not None:
        (pack_module / "build.gradle.kts").unlink(missing_ok=True)


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
    m = verify_for_apps(bundle, dest)
    src_dir = dest / "Sources" / IOS_PACKAGE
    sources = {dest / "Package.swift": _ios_package_swift(), src_dir / f"{IOS_PACKAGE}.swift": _ios_accessor()}
    theirs = [str(p) for p, text in sources.items() if p.exists() and not _holds(p, text)]
    if theirs and not overwrite:  # a package of the user's own: not replaced without --overwrite
        raise FileExistsError(f"{', '.join(theirs)} already exists and is not meki bundle's; pass --overwrite")
    _copy_bundle(bundle, m, src_dir / IOS_BUNDLE_DIR, overwrite)
    for path, text in sources.items():
        atomic_write_text(path, text)
    return IosPlacement(dest, src_dir / IOS_BUNDLE_DIR)


def _holds(path: Path, text: str) -> bool:
    try:
        return path.is_file() and path.read_text(errors="replace") == text
    except OSError:
        return False


def _ios_accessor() -> str:
    return ("import Foundation\n\n/// The MeKi bundle copied here by `meki bundle --ios`.\n"
            f"public enum {IOS_PACKAGE} {{\n"
            "    /// Folder holding manifest.json and the bundle's files.\n"
            "    public static var bundleURL: URL {\n"
            f'        Bundle.module.url(forResource: "{IOS_BUNDLE_DIR}", withExtension: nil)!\n'
            "    }\n}\n")


def _ios_package_swift() -> str:
    return ("// swift-tools-version:5.9\n// written by meki bundle: the MeKi bundle as a resource package\n"
            "import PackageDescription\n\n"
            "let package = Package(\n"
            f'    name: "{IOS_PACKAGE}",\n'
            "    platforms: [.iOS(.v17), .macOS(.v14)],\n"
            f'    products: [.library(name: "{IOS_PACKAGE}", targets: ["{IOS_PACKAGE}"])],\n'
            f'    targets: [.target(name: "{IOS_PACKAGE}", resources: [.copy("{IOS_BUNDLE_DIR}")])]\n'
            ")\n")
