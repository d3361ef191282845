"""Every Swift file in ios_bridge (and the package `meki bundle --ios` writes) parses with a real Swift
grammar (tree-sitter-swift): no ERROR or MISSING nodes. No Swift compiler exists on this machine,
so this is a syntax check only; types and Apple APIs are checked by `swift build` on a Mac."""
from pathlib import Path

import pytest

tree_sitter = pytest.importorskip("tree_sitter")
tree_sitter_swift = pytest.importorskip("tree_sitter_swift")

ROOT = Path(__file__).resolve().parents[2]
SWIFT_FILES = sorted((ROOT / "ios_bridge").rglob("*.swift"))
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))


def problems(source: bytes) -> list[str]:
    """Line:column and kind of every ERROR or MISSING node."""
    out, stack = [], [PARSER.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            row, col = node.start_point
            out.append(f"{row + 1}:{col + 1} {'MISSING ' + node.type if node.is_missing else 'ERROR'}")
        stack.extend(node.children)
    return out


def test_there_are_swift_sources():
    names = {p.name for p in SWIFT_FILES}
    assert {"Package.swift", "Xxh3.swift", "MemoryPack.swift", "BundleManifest.swift", "CoreMLGenerator.swift",
            "MemoryPackGoldenTests.swift", "ConformanceTests.swift"} <= names


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_swift_file_parses(path):
    assert problems(path.read_bytes()) == []


def test_the_grammar_catches_errors():
    assert problems(b"func f( {\n") and not problems(b"let x: [Int] = [1, 2]\n")


def test_generated_resource_package_parses(tmp_path):
    from pipeline import bundle_apps
    from tests.apps.test_bundle_apps import make_bundle
    placed = bundle_apps.bundle_ios(make_bundle(tmp_path / "b"), tmp_path / "MekiAssets")
    generated = sorted(placed.package_dir.rglob("*.swift"))
    assert len(generated) == 2
    for path in generated:
        assert problems(path.read_bytes()) == [], path


def test_swift_readers_name_every_check():
    """No compiler here: at least every CHECKS.md name the Swift readers must report is in their
    sources as a string literal (the C++, Java and Python runners check the names by running)."""
    import json
    import re
    index = json.loads((ROOT / "conformance/index.json").read_text())
    src = "\n".join(p.read_text() for p in (ROOT / "ios_bridge/Sources").rglob("*.swift"))
    literals = set(re.findall(r'"([a-z0-9_]+\.[a-z0-9_]+)"', src))
    reader_checks = {c for c in index["checks"] if not c.startswith("stats.")}
    assert reader_checks - literals == set()
    assert literals & {c.split(".")[0] + "." for c in literals} == set()
    assert {x for x in literals if x.split(".")[0] in ("pack", "manifest", "bundle")} <= set(index["checks"])
