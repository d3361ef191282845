"""The export's helper processes fail in one line that says what happened (real child processes)."""

import sys

import pytest

from pipeline.export.child import run_child, scratch_dir
from pipeline.export.registry import ExportError


def test_a_python_failure_is_its_exception_line():
    with pytest.raises(ExportError) as err:
        run_child([sys.executable, "-c", "print('noise'); raise ValueError('the graph has no inputs')"], "conversion")
    assert str(err.value) == "conversion failed (exit 1): ValueError: the graph has no inputs"


def test_a_kill_for_memory_says_so_in_one_line():
    with pytest.raises(ExportError) as err:
        run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], "quantisation")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("quantisation was killed by the system (SIGKILL: out of memory")
    assert "use a machine with more memory" in msg


def test_picked_lines_and_other_signals():
    code = "import sys; print('INFO ok'); print('ERROR: op X unsupported'); print('ERROR: op X unsupported'); sys.exit(3)"
    with pytest.raises(ExportError, match=r"^compile failed \(exit 3\): ERROR: op X unsupported$"):
        run_child([sys.executable, "-c", code], "compile", pick=lambda ls: [ln for ln in ls if "ERROR" in ln])
    with pytest.raises(ExportError, match="^compile died of SIGTERM$"):
        run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"], "compile")


SIGBUS_ON_A_MAPPED_FILE = """
import mmap, os, tempfile
path = os.path.join(tempfile.gettempdir(), "mapped")  # the scratch dir: run_child's TMPDIR
with open(path, "wb") as fh:
    fh.write(b"x" * 8192)
fh = open(path, "r+b")
view = mmap.mmap(fh.fileno(), 8192)
os.truncate(path, 0)  # the pages behind the mapping are gone, as when a write cannot get disk blocks
view[4096]
"""


def test_a_helper_in_a_scratch_dir_gets_it_as_tmpdir_and_a_sigbus_names_the_disk(tmp_path):
    with scratch_dir(tmp_path, "step") as work:
        assert work.parent == tmp_path and work.name.startswith(".meki-step-")
        done = run_child([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"], "probe")
        assert done.stdout.strip() == str(work)
        with pytest.raises(ExportError) as err:
            run_child([sys.executable, "-c", SIGBUS_ON_A_MAPPED_FILE], "conversion")
    msg = str(err.value)
    assert msg.startswith("conversion died of SIGBUS: a file it had mapped could not be read or written (a full "
                          "disk, most likely: ") and f"free on the bundle's disk, {tmp_path})" in msg
    assert not list(tmp_path.iterdir())  # the scratch dir is gone


def test_a_scratch_dir_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ExportError) as err:
        with scratch_dir(tmp_path, "litert", need=10**18):
            pass
    assert str(err.value).startswith(f"the export's litert step will write about 1000000000.0 GB beside the bundle "
                                     f"({tmp_path}); ")
    assert str(err.value).endswith("GB is free on that disk: free some space or write the bundle to another disk")
    assert not list(tmp_path.iterdir())
