"""AdbShellTransport: the real adb-shell AdbDeviceTcp code, over real TCP, against FakeAdbd.

FakeAdbd (tests/support/fake_adbd.py) is the only fake: a scripted adbd speaking the ADB wire
and sync protocols, running each `shell:` command with mksh (or sh) like a phone does.
"""
import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("adb_shell")

from adb_shell.auth.keygen import keygen  # noqa: E402
from adb_shell.auth.sign_cryptography import CryptographySigner  # noqa: E402

from device_tests.errors import (  # noqa: E402
    CommandTimeout,
    DeviceDisconnected,
    DeviceFull,
    DeviceUnauthorized,
    PermissionDenied,
    RemotePathMissing,
    RunnerMissing,
)
from device_tests.facts import collect_facts  # noqa: E402
from tests.support.fake_adbd import FakeAdbd  # noqa: E402
from device_tests.memory_sampler import MemorySampler  # noqa: E402
from device_tests.transports.adbshell import (  # noqa: E402
    AdbShellTransport,
    adb_key_paths,
    load_signers,
)

FIX = Path(__file__).parents[1] / "fixtures" / "android"
HOSTILE = ["a b", "it's", 'q"uote', ";rm -rf sentinel", "$(touch pwned)", "new\nline",
           "`touch pwned2`", "-rf", "*", "back\\slash"]


@pytest.fixture
def device(tmp_path):
    root = tmp_path / "device"
    (root / "tmp").mkdir(parents=True)
    (root / "sentinel").write_text("must survive")
    with FakeAdbd(root) as adbd:
        yield adbd


@pytest.fixture
def t(device):
    tr = AdbShellTransport(device.address, tmp_dir=str(device.root / "tmp"), signers=[],
                           connect_timeout_s=2.0, op_timeout_s=5.0, backoff_s=0.01)
    yield tr
    tr.close()


def assert_untouched(root: Path) -> None:
    assert (root / "sentinel").read_text() == "must survive"
    assert not list(root.rglob("pwned*"))


def test_shell_exit_code_and_streams(t):
    r = t.shell(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert t.shell(["printf", "%s", "no newline"]).stdout == "no newline"
    assert t.shell(["pwd"], cwd=str(t.tmp_dir)).stdout.strip() == t.tmp_dir


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_paths_are_never_executed(t, device, tmp_path, name):
    src = tmp_path / "payload"
    src.write_bytes(b"payload")
    remote = f"{device.root}/d {name}/f {name}"
    assert t.push(src, remote) is True
    assert t.exists(remote) and t.read_text(remote) == "payload"
    assert t.sha256(remote) == t.sha256(remote) is not None
    assert t.push(src, remote) is False
    t.pull(remote, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"payload"
    assert t.shell(["echo", name]).stdout == name + "\n"
    assert_untouched(device.root)
    assert Path(remote).read_bytes() == b"payload"  # landed under exactly that name


def test_push_is_atomic_and_skips_matching(t, device, tmp_path):
    src = tmp_path / "model.pack"
    src.write_bytes(os.urandom(300_000))  # several sync DATA chunks
    dest = f"{device.root}/bundle/model.pack"
    assert t.push(src, dest) is True and t.push(src, dest) is False
    assert Path(dest).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in Path(dest).parent.iterdir()) == ["model.pack"]


def test_full_disk_leaves_nothing_under_final_name(t, device, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(b"z" * 10_000)
    device.faults.sync_fail = "couldn't write: No space left on device"
    with pytest.raises(DeviceFull):
        t.push(src, f"{device.root}/bundle/big")
    assert not (device.root / "bundle" / "big").exists()
    assert list((device.root / "bundle").iterdir()) == []  # temp name cleaned up too


def test_permission_and_missing_paths(t, device, tmp_path):
    device.faults.sync_fail = "secure_mkdirs failed: Permission denied"
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(PermissionDenied):
        t.push(src, f"{device.root}/f")
    device.faults.sync_fail = None
    with pytest.raises(RemotePathMissing):
        t.pull(f"{device.root}/missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert t.sha256(f"{device.root}/missing") is None and not t.exists(f"{device.root}/missing")


def test_command_timeout_then_recovers(t):
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout):
        t.shell(["sleep", "5"], timeout_s=0.5)
    assert time.monotonic() - t0 < 4
    assert t.shell(["echo", "alive"]).stdout == "alive\n"


def test_transient_disconnect_is_retried(t, device, tmp_path):
    t.shell(["true"])  # connected
    device.faults.drop_on_open = device.faults.opens_seen + 1  # cut the link on the next OPEN
    src = tmp_path / "f"
    src.write_text("hello")
    # sha256 is idempotent: it reconnects with backoff and succeeds.
    assert t.sha256(f"{device.root}/sentinel") is not None
    assert t.push(src, f"{device.root}/after-blip") is True


def test_device_gone_is_a_clear_error(t, device):
    t.shell(["true"])
    device.faults.refuse_connections = 100
    device.drop_all()
    with pytest.raises(DeviceDisconnected):
        t.exists("/")


def test_runner_processes(t, device):
    with pytest.raises(RunnerMissing):
        t.start(["./no-runner"], cwd=str(device.root), log_path=str(device.root / "log"))
    code = "import time; print('up', flush=True); time.sleep(30)"
    pid = t.start([sys.executable, "-c", code], cwd=str(device.root), log_path=str(device.root / "log"))
    assert t.is_running(pid)
    with MemorySampler(t, pid, interval_s=0.1) as sampler:
        time.sleep(0.5)
    assert sampler.series.samples and sampler.series.peak("vm_rss_kb") > 1000
    t.stop(pid, grace_s=2.0)
    assert not t.is_running(pid)
    assert t.free_bytes(str(device.root)) > 0


def test_hostile_serial_goes_nowhere_near_a_shell(device, tmp_path):
    tr = AdbShellTransport(f"127.0.0.1:{device.port};touch pwned", signers=[], connect_timeout_s=1.0)
    with pytest.raises((DeviceDisconnected, ImportError)):
        tr.shell(["true"])  # not host:port, so treated as a USB serial, which is not attached
    assert_untouched(device.root)
    assert not Path("pwned").exists()


def test_auth_with_users_key_and_refusal(tmp_path, monkeypatch):
    home = tmp_path / "android"
    monkeypatch.setenv("ANDROID_USER_HOME", str(home))
    monkeypatch.delenv("ADB_VENDOR_KEYS", raising=False)
    signers = load_signers()  # first use creates ~/.android/adbkey, as adb does
    assert adb_key_paths() == [home / "adbkey"]
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    keygen(str(vendor / "ci.adb_key"))
    monkeypatch.setenv("ADB_VENDOR_KEYS", str(vendor))
    assert adb_key_paths() == [home / "adbkey", vendor / "ci.adb_key"]

    root = tmp_path / "dev"
    root.mkdir()
    pub = (home / "adbkey.pub").read_bytes()
    with FakeAdbd(root, authorized_keys=[pub]) as adbd:
        tr = AdbShellTransport(adbd.address, signers=signers, connect_timeout_s=2.0)
        # No /data/local/tmp here: stderr then joins stdout instead of the command being skipped.
        assert tr.shell(["echo", "authed"]).stdout == "authed\n"
        assert "oops" in tr.shell(["sh", "-c", "echo oops >&2"]).stdout
        tr.close()
        stranger = CryptographySigner(str(vendor / "ci.adb_key"))
        tr = AdbShellTransport(adbd.address, signers=[stranger], connect_timeout_s=1.0,
                               auth_timeout_s=1.0)
        with pytest.raises(DeviceUnauthorized):
            tr.connect()


def test_android_facts_over_adb(tmp_path):
    # Stand-ins for the phone's own tools print real captured output.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "getprop").write_text(f"#!/bin/sh\ncat '{FIX}/getprop_android14_emulator_excerpt.txt'\n")
    (bin_dir / "dumpsys").write_text(
        "#!/bin/sh\ncase \"$1\" in\n"
        f"  thermalservice) cat '{FIX}/dumpsys_thermalservice_hal20_moderate.txt';;\n"
        f"  battery) cat '{FIX}/dumpsys_battery.txt';;\n"
        "  *) echo \"Can't find service: $1\"; exit 1;;\nesac\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    root = tmp_path / "dev"
    (root / "tmp").mkdir(parents=True)
    with FakeAdbd(root, bin_dir=bin_dir) as adbd:
        tr = AdbShellTransport(adbd.address, tmp_dir=str(root / "tmp"), signers=[])
        facts = collect_facts(tr)
        tr.close()
    assert (facts.kind, facts.model, facts.soc, facts.sdk, facts.abi) == (
        "android", "sdk_gphone64_x86_64", "ranchu", 34, "x86_64")
    assert facts.board is None and facts.os_version == "14"
    assert facts.thermal_status == "MODERATE" and facts.max_cpu_celsius == 48.2
    assert (facts.battery_percent, facts.battery_celsius) == (100.0, 27.4)
    assert facts.page_size and facts.total_ram_kb
