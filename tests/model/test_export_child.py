"""The export's helper processes fail in one line that says what happened (real child processes)."""

import sys

import pytest

from pipeline.export.child import run_child
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
