"""Open a bundle's memory pack the one way every consumer must: the model's fingerprint expected,
and the header compared with the manifest's memory_pack (conformance/CHECKS.md: bundle.pack_mismatch)."""
from __future__ import annotations

from pathlib import Path

from contract.manifest import BundleError, Manifest, check_pack_header, verify_bundle
from mobile_runtime.pack import MemoryPack, PackError


def open_bundle_pack(bundle: Path, m: Manifest, mode: str = "pread", cache_bytes: int = 8 << 20) -> MemoryPack:
    """The bundle's pack, opened and checked (pack.* checks, then bundle.pack_mismatch).
    m must come from verify_bundle (paths clean, no symlinks). Raises PackError or BundleError."""
    pack = MemoryPack.open(Path(bundle) / m.memory_pack.file, mode=mode, cache_bytes=cache_bytes,
                           expected_fingerprint=m.fingerprint)
    try:
        check_pack_header(m, pack.dtype, pack.layout, pack.vocab_size, pack.num_layers, pack.d_mem)
    except BaseException:
        pack.close()
        raise
    return pack


def verify_bundle_and_pack(bundle: Path, check_hashes: bool = True, every_block: bool = False) -> Manifest:
    """verify_bundle, then open and close the pack (header, table, fingerprint, dimensions): what the
    bench engine and `meki bundle` run before pushing or copying anything; every_block: each data block
    against its checksum too (`meki bundle`: an app must not ship a pack that fails at its first
    lookup). Raises BundleError (a pack problem keeps its pack.* check name)."""
    m = verify_bundle(bundle, check_hashes)
    if m.memory_pack is not None:
        try:
            pack = open_bundle_pack(bundle, m, cache_bytes=0)
            try:
                if every_block:
                    pack.verify()
            finally:
                pack.close()
        except PackError as e:
            raise BundleError(f"{bundle}: memory pack: {e}", e.check) from None
    return m
