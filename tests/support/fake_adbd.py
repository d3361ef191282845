"""A scripted adbd on a local TCP port, for tests: no phone exists on CI machines.

It speaks the real ADB wire protocol (CNXN/AUTH/OPEN/OKAY/WRTE/CLSE, and the sync protocol
STAT/SEND/DATA/DONE/RECV/QUIT), so adb-shell's AdbDeviceTcp and even the real `adb` binary
(`adb connect 127.0.0.1:PORT`) talk to it unchanged. Like adbd, `shell:` services run their
command string with a POSIX shell (mksh when installed, Android's shell) on this machine, so
a quoting bug in the harness would really execute. Faults can be injected for tests.
"""
from __future__ import annotations

import base64
import os
import queue
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

A_CNXN, A_AUTH, A_OPEN, A_OKAY, A_CLSE, A_WRTE = (
    int.from_bytes(c, "little") for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE")
)
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
VERSION = 0x01000000
MAXDATA = 256 * 1024
_HDR = struct.Struct("<6I")


def pack_message(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """One ADB message: 24-byte header (with checksum and magic) then the payload."""
    header = _HDR.pack(cmd, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, cmd ^ 0xFFFFFFFF)
    return header + data


def parse_android_pubkey(text: bytes) -> tuple[int, int]:
    """(modulus, exponent) from adbkey.pub: base64 of Android's RSAPublicKey struct."""
    raw = base64.b64decode(text.strip().split(b" ")[0].rstrip(b"\0"))
    words = struct.unpack_from("<I", raw, 0)[0]
    n = int.from_bytes(raw[8 : 8 + 4 * words], "little")
    e = struct.unpack_from("<I", raw, 8 + 8 * words)[0]
    return n, e


@dataclass
class Faults:
    """Misbehaviour to inject; tests flip these while the server runs."""

    drop_on_open: int | None = None  # close the link when the n-th OPEN (1-based) arrives
    refuse_connections: int = 0  # accept-then-close this many upcoming connections
    hang_services: tuple[str, ...] = ()  # OPENs whose service contains one of these never answer
    sync_fail: str | None = None  # SEND ends in FAIL with this message (e.g. ENOSPC)
    opens_seen: int = 0


@dataclass
class _Stream:
    host_id: int
    okay: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    out: queue.Queue = field(default_factory=queue.Queue)  # bytes, or None for CLSE
    proc: subprocess.Popen | None = None
    buf: bytearray = field(default_factory=bytearray)
    push: dict = field(default_factory=dict)
    closed: bool = False


class FakeAdbd:
    """Listens on 127.0.0.1:port; one thread per connection. Use as a context manager."""

    def __init__(self, root: Path, *, authorized_keys: list[bytes] | None = None,
                 serial: str = "fake0001", props: dict[str, str] | None = None,
                 bin_dir: Path | None = None) -> None:
        self.root = Path(root)  # cwd of shell commands
        self.bin_dir = bin_dir  # put first on PATH: stand-ins for device tools (getprop, dumpsys)
        self.authorized_keys = authorized_keys  # None: no AUTH at all
        self.serial = serial
        self.props = props or {"ro.product.model": "FakePhone", "ro.product.device": "fake"}
        self.faults = Faults()
        self.shell_commands: list[str] = []  # every shell: command string received, for asserts
        self.shells: list[subprocess.Popen] = []  # every shell started: close() hangs up on and reaps them
        self.shell_bin = shutil.which("mksh") or "/bin/sh"
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[_Conn] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeAdbd":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; shells still running are hung up on and reaped here, so none outlives the server
        as a child of the test process (a later test in the same process may count its children)."""
        self._stop.set()
        self._sock.close()
        for conn in list(self._conns):
            conn.shutdown()
        for proc in self.shells:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # ignored the hang-up
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def drop_all(self) -> None:
        """Cut every open connection, as an unplugged cable would."""
        for conn in list(self._conns):
            conn.shutdown()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            if self.faults.refuse_connections > 0:
                self.faults.refuse_connections -= 1
                sock.close()
                continue
            conn = _Conn(self, sock)
            self._conns.append(conn)
            threading.Thread(target=conn.run, daemon=True).start()


class _Conn:
    """One host connection: the handshake, then a message loop dispatching to streams."""

    def __init__(self, server: FakeAdbd, sock: socket.socket) -> None:
        self.server, self.sock = server, sock
        self.lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.maxdata = MAXDATA
        self.token = b""
        self.alive = True

    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self.lock:
            try:
                self.sock.sendall(pack_message(cmd, arg0, arg1, data))
            except OSError:
                self.alive = False

    def recv_exact(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("host closed")
            data += chunk
        return bytes(data)

    def shutdown(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for st in list(self.streams.values()):
            self._kill(st)
        if self in self.server._conns:
            self.server._conns.remove(self)

    def run(self) -> None:
        try:
            while self.alive:
                cmd, arg0, arg1, length, _crc, magic = _HDR.unpack(self.recv_exact(_HDR.size))
                if magic != cmd ^ 0xFFFFFFFF:
                    raise ConnectionError("bad magic")
                self.dispatch(cmd, arg0, arg1, self.recv_exact(length) if length else b"")
        except (ConnectionError, OSError):
            pass
        finally:
            self.shutdown()

    def banner(self) -> bytes:
        props = "".join(f"{k}={v};" for k, v in self.server.props.items())
        return f"device::{props}features=".encode()

    def dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.maxdata = min(MAXDATA, arg1 or MAXDATA)
            if self.server.authorized_keys is None:
                self.send(A_CNXN, VERSION, self.maxdata, self.banner())
            else:
                self.token = secrets.token_bytes(20)
                self.send(A_AUTH, AUTH_TOKEN, 0, self.token)
        elif cmd == A_AUTH:
            self.auth(arg0, data)
        elif cmd == A_OPEN:
            self.open(arg0, data.rstrip(b"\0").decode("utf-8", errors="surrogateescape"))
        elif cmd == A_OKAY:
            st = self.streams.get(arg1)
            if st is not None:
                st.okay.release()
        elif cmd == A_WRTE:
            st = self.streams.get(arg1)
            if st is not None:
                self.send(A_OKAY, arg1, arg0)
                st.buf += data
                self.sync_requests(st)
        elif cmd == A_CLSE:
            st = self.streams.pop(arg1, None)
            if st is not None:  # adbd answers a host's CLSE with its own
                self._kill(st)
                self.send(A_CLSE, arg1, st.host_id)

    def auth(self, kind: int, data: bytes) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        if kind == AUTH_SIGNATURE:
            for pub in self.server.authorized_keys or []:
                n, e = parse_android_pubkey(pub)
                try:
                    rsa.RSAPublicNumbers(e, n).public_key().verify(
                        data, self.token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
                except InvalidSignature:
                    continue
                self.send(A_CNXN, VERSION, self.maxdata, self.banner())
                return
            self.token = secrets.token_bytes(20)
            self.send(A_AUTH, AUTH_TOKEN, 0, self.token)
        # AUTH_RSAPUBLICKEY: a real phone would show the "Allow USB debugging?" prompt; we stay
        # silent, as a phone whose user never answers.

    def open(self, host_id: int, service: str) -> None:
        faults = self.server.faults
        faults.opens_seen += 1
        if faults.drop_on_open is not None and faults.opens_seen >= faults.drop_on_open:
            faults.drop_on_open = None
            self.shutdown()
            return
        if any(h in service for h in faults.hang_services):
            return
        our_id, self.next_id = self.next_id, self.next_id + 1
        st = _Stream(host_id)
        if service.startswith("shell:"):
            self.streams[our_id] = st
            self.send(A_OKAY, our_id, host_id)
            self.start_shell(our_id, st, service[len("shell:"):])
        elif service == "sync:":
            self.streams[our_id] = st
            self.send(A_OKAY, our_id, host_id)
        else:
            self.send(A_CLSE, 0, host_id)
            return
        threading.Thread(target=self.writer, args=(our_id, st), daemon=True).start()

    def writer(self, our_id: int, st: _Stream) -> None:
        """Send queued output as WRTEs, one outstanding at a time (adb's flow control)."""
        while self.alive and not st.closed:
            item = st.out.get()
            if item is None:
                if self.streams.pop(our_id, None) is not None:
                    self.send(A_CLSE, our_id, st.host_id)
                return
            for i in range(0, len(item), self.maxdata):
                self.send(A_WRTE, our_id, st.host_id, item[i : i + self.maxdata])
                while not st.okay.acquire(timeout=0.2):
                    if st.closed or not self.alive:
                        return

    def start_shell(self, our_id: int, st: _Stream, command: str) -> None:
        self.server.shell_commands.append(command)
        path = os.environ.get("PATH", "/usr/bin:/bin")
        if self.server.bin_dir is not None:
            path = f"{self.server.bin_dir}{os.pathsep}{path}"
        env = {"PATH": path, "HOME": str(self.server.root)}
        st.proc = subprocess.Popen(
            [self.server.shell_bin, "-c", command], cwd=self.server.root, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.server.shells.append(st.proc)

        def pump() -> None:
            assert st.proc is not None and st.proc.stdout is not None
            fd = st.proc.stdout.fileno()
            while chunk := os.read(fd, 65536):
                st.out.put(chunk)
            st.proc.wait()
            st.out.put(None)

        threading.Thread(target=pump, daemon=True).start()

    @staticmethod
    def _kill(st: _Stream) -> None:
        """adbd hangs up on a closed stream's process group; nohup'd children survive."""
        st.closed = True
        st.out.put(None)
        if st.proc is not None and st.proc.poll() is None:
            try:
                os.killpg(st.proc.pid, signal.SIGHUP)
            except ProcessLookupError:
                pass
            threading.Thread(target=st.proc.wait, daemon=True).start()  # reap

    # -- sync protocol ------------------------------------------------------------------------
    def sync_requests(self, st: _Stream) -> None:
        """Consume every complete sync request in st.buf."""
        while len(st.buf) >= 8:
            rid = bytes(st.buf[:4])
            length = struct.unpack_from("<I", st.buf, 4)[0]
            has_payload = rid in (b"SEND", b"RECV", b"STAT", b"LIST", b"DATA")
            if has_payload and len(st.buf) < 8 + length:
                return
            payload = bytes(st.buf[8 : 8 + length]) if has_payload else b""
            del st.buf[: 8 + (length if has_payload else 0)]
            self.sync_one(st, rid, length, payload)

    def sync_one(self, st: _Stream, rid: bytes, length: int, payload: bytes) -> None:
        if rid == b"STAT":
            try:
                s = os.stat(payload.decode("utf-8", errors="surrogateescape"))
                st.out.put(b"STAT" + struct.pack("<3I", s.st_mode, s.st_size & 0xFFFFFFFF, int(s.st_mtime)))
            except OSError:
                st.out.put(b"STAT" + struct.pack("<3I", 0, 0, 0))
        elif rid == b"SEND":
            path, _, mode = payload.decode("utf-8", errors="surrogateescape").rpartition(",")
            st.push = {"path": path, "mode": int(mode or "420") & 0o7777, "data": bytearray()}
        elif rid == b"DATA":
            st.push["data"] += payload
        elif rid == b"DONE":
            self.finish_push(st)
        elif rid == b"RECV":
            self.send_file(st, payload.decode("utf-8", errors="surrogateescape"))
        elif rid == b"QUIT":
            st.out.put(None)
        else:
            st.out.put(_sync_fail(f"unknown sync request {rid!r}"))

    def finish_push(self, st: _Stream) -> None:
        if self.server.faults.sync_fail:
            st.out.put(_sync_fail(self.server.faults.sync_fail))
            return
        try:
            path = st.push["path"]
            with open(path, "wb") as f:
                f.write(st.push["data"])
            os.chmod(path, st.push["mode"])
            st.out.put(b"OKAY" + struct.pack("<I", 0))
        except OSError as exc:
            st.out.put(_sync_fail(f"couldn't create file: {exc.strerror}"))

    def send_file(self, st: _Stream, path: str) -> None:
        try:
            with open(path, "rb") as f:
                while chunk := f.read(64 * 1024):
                    st.out.put(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        except OSError as exc:
            st.out.put(_sync_fail(exc.strerror or str(exc)))
            return
        st.out.put(b"DONE" + struct.pack("<I", 0))


def _sync_fail(message: str) -> bytes:
    data = message.encode()
    return b"FAIL" + struct.pack("<I", len(data)) + data
