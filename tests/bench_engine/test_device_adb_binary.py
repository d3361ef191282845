"""AdbBinaryTransport with the genuine `adb` client and server (Debian's adb package).

The server is started on a private port with its own HOME and connects over TCP
(`adb connect`) to FakeAdbd, the scripted adbd; nothing else is faked.
"""
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from device_tests.errors import CommandTimeout, DeviceDisconnected, DeviceUnauthorized
from tests.support.fake_adbd import FakeAdbd
from device_tests.transports.adb_binary import AdbBinaryTransport, AdbMissing

ADB = shutil.which("adb")
pytestmark = pytest.mark.skipif(ADB is None, reason="adb binary not installed (apt-get install adb)")


@pytest.fixture
def server(tmp_path):
    """A private adb server: own port and HOME, killed afterwards."""
    port = 15000 + os.getpid() % 2000
    env = dict(os.environ, HOME=str(tmp_path / "home"), ANDROID_ADB_SERVER_PORT=str(port))
    (tmp_path / "home").mkdir()
    run = lambda *a: subprocess.run([ADB, *a], env=env, capture_output=True, text=True, timeout=30)  # noqa: E731
    run("start-server")
    yield env, run
    run("kill-server")


def connect(run, adbd: FakeAdbd) -> None:
    out = run("connect", adbd.address).stdout
    assert "connected" in out, out
    for _ in range(50):  # the server needs a moment to finish the handshake
        if f"{adbd.address}\tdevice" in run("devices").stdout or adbd.authorized_keys == []:
            return
        time.sleep(0.1)


@pytest.fixture
def device(tmp_path, server):
    env, run = server
    root = tmp_path / "device"
    (root / "tmp").mkdir(parents=True)
    (root / "sentinel").write_text("must survive")
    with FakeAdbd(root) as adbd:
        connect(run, adbd)
        yield adbd, AdbBinaryTransport(adbd.address, env=env, tmp_dir=str(root / "tmp"), op_timeout_s=20)


def test_argv_keeps_serial_one_element(tmp_path):
    t = AdbBinaryTransport("x;rm -rf / $(id)", adb_path=ADB)
    assert t.argv(["shell", "echo"]) == [ADB, "-s", "x;rm -rf / $(id)", "shell", "echo"]


def test_shell_push_pull_hostile(device, tmp_path):
    adbd, t = device
    r = t.shell(["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert (r.returncode, r.stdout, r.stderr) == (4, "out\n", "err\n")
    src = tmp_path / "f"
    src.write_bytes(os.urandom(70_000))
    for name in ["a b", "it's", "$(touch pwned)", ";rm -rf sentinel", "new\nline"]:
        remote = f"{adbd.root}/d {name}/f {name}"
        assert t.push(src, remote) is True and t.push(src, remote) is False
        t.pull(remote, tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == src.read_bytes()
        assert Path(remote).stat().st_mode & 0o777 == 0o644
    assert (adbd.root / "sentinel").read_text() == "must survive"
    assert not list(adbd.root.rglob("pwned*"))


def test_timeout_and_lost_device(device, server):
    adbd, t = device
    with pytest.raises(CommandTimeout):
        t.shell(["sleep", "5"], timeout_s=0.5)
    env, _ = server
    gone = AdbBinaryTransport("$(touch pwned)", env=env)
    with pytest.raises(DeviceDisconnected):
        gone.shell(["true"])
    assert not Path("pwned").exists()


def test_device_lost_mid_command_is_a_disconnect(device):
    """The adb client exits 0 with nothing said when the device goes mid-command: the transport asks the
    server (get-state) and raises DeviceDisconnected, which the bench retries, not a plain TransportError."""
    adbd, t = device
    assert t.shell(["true"]).returncode == 0

    def gone():
        adbd.faults.refuse_connections = 100
        adbd.drop_all()
    threading.Timer(0.5, gone).start()
    with pytest.raises(DeviceDisconnected, match="went away mid-command"):
        t.shell(["sh", "-c", "sleep 2; echo done"], timeout_s=15)


def test_unauthorized_device(tmp_path, server):
    env, run = server
    root = tmp_path / "dev"
    root.mkdir()
    with FakeAdbd(root, authorized_keys=[]) as adbd:  # refuses every key, like an unanswered prompt
        run("connect", adbd.address)
        time.sleep(0.5)
        with pytest.raises(DeviceUnauthorized, match="unauthorized"):
            AdbBinaryTransport(adbd.address, env=env).shell(["true"], timeout_s=10)


def test_adb_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(AdbMissing):
        AdbBinaryTransport("any")
