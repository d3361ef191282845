"""The layout's rules, checked so they cannot quietly regress.

- contract/ is the bottom layer: it imports none of the toolkit's other packages.
- the runtime and the bench engine never import the pipeline, nor torch at module level (they run
  on phones and hosts without torch).
- export backends are recipes over pipeline/export/common.py: no backend imports another.
- the numpy-only test folders import with torch blocked.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("contract", "pipeline", "training", "meki", "mobile_runtime", "device_tests")
BACKENDS = ("executorch_xnnpack", "executorch_npu", "coreml_backend", "tflite_backend", "qnn_backend", "npu_refusals")
NUMPY_ONLY_TESTS = ("contract", "bench_engine", "apps", "training")


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute module names a file imports (top level and inside functions, or top level only)."""
    names = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in (tree.body if top_level_only else ast.walk(tree)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def imports_of(package: str, top_level_only: bool = False) -> dict[str, set[str]]:
    return {str(p.relative_to(ROOT)): imported_modules(p, top_level_only)
            for p in sorted((ROOT / package).rglob("*.py"))}


def test_contract_imports_no_other_layer():
    bad = {f: sorted(m for m in mods if m.split(".")[0] in OURS and not m.startswith("contract"))
           for f, mods in imports_of("contract").items()}
    assert not {f: m for f, m in bad.items() if m}


@pytest.mark.parametrize("package", ["mobile_runtime", "device_tests"])
def test_runtime_and_bench_engine_need_no_torch(package):
    """Never the pipeline; torch only inside the function that opens ExecuTorch's Python runtime."""
    bad = {f: sorted(m for m in mods if m.split(".")[0] in ("pipeline", "training", "meki"))
           for f, mods in imports_of(package).items()}
    bad |= {f: sorted(m for m in mods if m.split(".")[0] == "torch")
            for f, mods in imports_of(package, top_level_only=True).items() if not bad.get(f)}
    assert not {f: m for f, m in bad.items() if m}


def test_backends_do_not_import_each_other():
    bad = {}
    for name in BACKENDS:
        mods = imported_modules(ROOT / "pipeline" / "export" / f"{name}.py")
        others = sorted(m for m in mods if m.split(".")[-1] in BACKENDS and m.split(".")[-1] != name)
        if others:
            bad[name] = others
    assert not bad


def test_numpy_only_test_folders_import_without_torch():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts)
               for folder in NUMPY_ONLY_TESTS for p in sorted((ROOT / "tests" / folder).glob("test_*.py"))]
    code = ("import importlib, sys\n"
            "sys.modules['torch'] = None; sys.modules['executorch'] = None\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
