"""A memory cgroup's limit is what an export may use: v1 and v2 layouts, and a real cgroup where one can be made."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.memory_limit import UNLIMITED, cgroup_memory

REPO = Path(__file__).resolve().parents[2]
V1_NO_LIMIT = "9223372036854771712"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc_cgroup"
    path.write_text(text)
    return path


def test_v1_takes_the_hierarchical_limit_and_counts_file_pages_reclaimable(tmp_path):
    root = tmp_path / "fs"
    _write(root, {"memory/job/step/memory.limit_in_bytes": V1_NO_LIMIT,  # the ancestor's limit applies
                  "memory/job/step/memory.usage_in_bytes": "600",
                  "memory/job/step/memory.stat": "cache 300\nhierarchical_memory_limit 1000\n"
                                                 "total_inactive_file 120\ntotal_active_file 80\n"})
    cg = cgroup_memory(_proc(tmp_path, "5:memory:/job/step\n1:name=systemd:/\n0::/\n"), root)
    assert (cg.version, cg.limit, cg.usage, cg.file, cg.headroom) == (1, 1000, 600, 200, 600)


def test_v2_takes_the_level_with_least_headroom(tmp_path):
    root = tmp_path / "fs"
    _write(root, {"a/b/memory.max": "max", "a/b/memory.current": "100", "a/b/memory.stat": "file 10\n",
                  "a/memory.max": "500", "a/memory.current": "400", "a/memory.stat": "anon 350\nfile 50\n",
                  "memory.stat": "file 0\n"})  # the root: no memory.max
    cg = cgroup_memory(_proc(tmp_path, "0::/a/b\n"), root)
    assert (cg.version, cg.path, cg.limit, cg.headroom) == (2, root / "a", 500, 150)


def test_a_namespaced_cgroup_is_the_mounts_root(tmp_path):
    """In a container /proc shows a path the container's mount does not have: the mount is its cgroup."""
    root = tmp_path / "fs"
    _write(root, {"memory.max": "2000", "memory.current": "10", "memory.stat": "file 0\n"})
    assert cgroup_memory(_proc(tmp_path, "0::/../../host/slice\n"), root).limit == 2000


def test_hybrid_layout_reads_v2_under_unified(tmp_path):
    root = tmp_path / "fs"
    _write(root, {"unified/job/memory.max": "4096", "unified/job/memory.current": "96",
                  "unified/job/memory.stat": "file 0\n", "memory/memory.limit_in_bytes": V1_NO_LIMIT,
                  "memory/memory.usage_in_bytes": "1", "memory/memory.stat": ""})
    cg = cgroup_memory(_proc(tmp_path, "4:memory:/\n0::/job\n"), root)
    assert (cg.version, cg.limit, cg.headroom) == (2, 4096, 4000)


@pytest.mark.parametrize("files", [{}, {"memory/memory.limit_in_bytes": V1_NO_LIMIT, "memory/memory.usage_in_bytes": "5",
                                        "memory/memory.stat": f"hierarchical_memory_limit {V1_NO_LIMIT}\n"},
                                   {"memory.max": "max", "memory.current": "5"}])
def test_no_limit_is_none(tmp_path, files):
    root = tmp_path / "fs"
    root.mkdir()
    _write(root, files)
    assert cgroup_memory(_proc(tmp_path, "4:memory:/\n0::/\n"), root) is None
    assert UNLIMITED < int(V1_NO_LIMIT)


def test_an_export_in_a_limited_cgroup_is_refused_before_it_starts():
    """A real cgroup (limited_memory; skipped where one cannot be made): /proc/meminfo still shows the
    machine's memory, the check goes by the 1 GiB limit and says so."""
    code = ("from pipeline.config import preset\n"
            "from pipeline.export.memory import available_bytes, check_memory\n"
            "from pipeline.export.registry import ExportError, ExportSettings\n"
            "from pipeline.memory_limit import limited_memory\n"
            "try:\n"
            "    cm = limited_memory(1 << 30)\n"
            "    cgroup = cm.__enter__()\n"
            "except OSError as exc:\n"
            "    print('skip', exc)\n"
            "    raise SystemExit\n"
            "print(available_bytes())\n"
            "try:\n"
            "    check_memory(preset('qwen3-0.6b'), ['executorch-xnnpack'], ExportSettings(quant='8da4w'), True)\n"
            "except ExportError as exc:\n"
            "    print(exc)\n"
            "print(cgroup.peak() <= 1 << 30, cgroup.oom_kills())\n"
            "cm.__exit__(None, None, None)\n"
            "print(cgroup.path.exists())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                         env={**os.environ, "MEKI_SKIP_MEMORY_CHECK": ""}).stdout.splitlines()
    if out[0].startswith("skip"):
        pytest.skip(f"cannot make a memory cgroup here: {out[0]}")
    assert int(out[0]) <= 1 << 30
    assert "stage 'load' needs about 3.0 GiB" in out[1]
    assert "raise the memory limit of this job's container or cgroup (1.0 GiB)" in out[1]
    assert out[2:] == ["True 0", "False"]  # within the limit, nothing killed; the cgroup removed on leaving
