"""A `starling` server run as a child process for the interop tests.

Owns: choosing free loopback ports, writing an ejabberd.yml-shaped config into a temp
dir, starting the binary, waiting (with a deadline) until its listeners accept TCP,
running `starlingctl` against its control socket, and stopping it by pid.
Never kills anything it did not start (no pkill).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HOST = "localhost"
LOOPBACK = "127.0.0.1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CTL_TIMEOUT = 30.0

# Servers still running, so that a crashed pytest run does not leave children behind.
_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def _kill_leftovers() -> None:
    for proc in list(_RUNNING.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


atexit.register(_kill_leftovers)


@dataclass(frozen=True)
class Binaries:
    """Paths of the two binaries under test."""

    server: Path
    ctl: Path

    @classmethod
    def locate(cls) -> Binaries:
        """Find the binaries: $STARLING_BIN / $STARLINGCTL_BIN, else the workspace's
        target dir ($CARGO_TARGET_DIR or ./target) in the debug profile."""
        repo = Path(__file__).resolve().parent.parent
        target = Path(os.environ.get("CARGO_TARGET_DIR", repo / "target"))
        if not target.is_absolute():
            target = repo / target
        server = Path(os.environ.get("STARLING_BIN", target / "debug" / "starling"))
        ctl = Path(os.environ.get("STARLINGCTL_BIN", target / "debug" / "starlingctl"))
        missing = [str(p) for p in (server, ctl) if not os.access(p, os.X_OK)]
        if missing:
            raise FileNotFoundError(
                "binaries not built: "
                + ", ".join(missing)
                + " (run `cargo build --bin starling --bin starlingctl` or scripts/test.sh)"
            )
        return cls(server=server, ctl=ctl)


@dataclass(frozen=True)
class Account:
    """A registered account."""

    user: str
    host: str
    password: str

    @property
    def jid(self) -> str:
        return f"{self.user}@{self.host}"


def free_ports(count: int, ip: str = LOOPBACK) -> list[int]:
    """Ports that were free on `ip` (127.0.0.1) a moment ago.

    All sockets stay open until every port is picked, so the ports differ; the small
    window before the server binds is covered by a retry in `StarlingServer.start`.
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ip, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# Tests register many accounts from 127.0.0.1 in quick succession; ejabberd's
# one-registration-per-address-per-600-s limit is switched off except where a test
# checks it.
DEFAULT_EXTRA = "registration_timeout: infinity\n"


def render_config(
    data_dir: Path,
    starttls_port: int,
    tls_port: int,
    extra: str = DEFAULT_EXTRA,
    *,
    host: str = HOST,
    ip: str = LOOPBACK,
    listeners: str = "",
) -> str:
    """The server config, in the ejabberd.yml shape the server contract accepts;
    `extra` is appended as top-level YAML, `listeners` (YAML list items, indented two
    spaces) to the `listen` list."""
    return f"""\
hosts: [{host}]
data_dir: {data_dir}
loglevel: debug
listen:
  - {{port: {starttls_port}, ip: {ip}, module: ejabberd_c2s, starttls_required: true}}
  - {{port: {tls_port}, ip: {ip}, module: ejabberd_c2s, tls: true}}
{listeners}acl:
  loopback: {{ip: ["127.0.0.0/8", "::1/128"]}}
access_rules:
  trusted_network: {{allow: loopback}}
  register: {{allow: all}}
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_version: {{}}
  mod_time: {{}}
  mod_last: {{}}
  mod_roster: {{versioning: true}}
  mod_register: {{ip_access: trusted_network}}
{extra}"""


def _accepts(port: int, ip: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


class StarlingServer:
    """One running `starling` process with its own data dir and ports."""

    def __init__(self, workdir: Path, binaries: Binaries, *, host: str = HOST, ip: str = LOOPBACK) -> None:
        self.workdir = workdir
        self.binaries = binaries
        self.data_dir = workdir / "data"
        self.config_path = workdir / "starling.yml"
        self.log_path = workdir / "starling.log"
        self.control_socket = self.data_dir / "starling.sock"
        self.host = host
        self.ip = ip
        self.starttls_port = 0
        self.tls_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        binaries: Binaries,
        *,
        extra_config: str = DEFAULT_EXTRA,
        attempts: int = 3,
        host: str = HOST,
        ip: str = LOOPBACK,
        listeners: str = "",
    ) -> StarlingServer:
        """Start a server and wait until both c2s listeners accept connections.

        Retries with fresh ports when the process dies early (a port taken between
        `free_ports` and the server's bind is the expected cause). `host`/`ip`: the served
        domain and the loopback address to listen on; `listeners`: more `listen` items (s2s,
        components), with ports the caller chose.
        """
        server = cls(workdir, binaries, host=host, ip=ip)
        last_error = ""
        for _ in range(attempts):
            server.starttls_port, server.tls_port = free_ports(2, ip)
            server.data_dir.mkdir(parents=True, exist_ok=True)
            server.control_socket.unlink(missing_ok=True)  # a failed attempt's leftover
            server.config_path.write_text(
                render_config(
                    server.data_dir,
                    server.starttls_port,
                    server.tls_port,
                    extra_config,
                    host=host,
                    ip=ip,
                    listeners=listeners,
                )
            )
            try:
                server._spawn()
                return server
            except RuntimeError as err:
                last_error = str(err)
                server.stop()
        raise RuntimeError(last_error)

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binaries.server), "--config", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _RUNNING[self.proc.pid] = self.proc
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(f"starling exited with {code} before it was ready:\n{self.log_tail()}")
            # The control socket comes up after the listeners; fixtures call
            # starlingctl right away, so wait for it too.
            if (
                _accepts(self.starttls_port, self.ip)
                and _accepts(self.tls_port, self.ip)
                and self.control_socket.exists()
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"starling not ready within {READY_TIMEOUT}s (ports {self.starttls_port}/"
            f"{self.tls_port}, socket {self.control_socket}):\n{self.log_tail()}"
        )

    def stop(self) -> int | None:
        """Stop the process by pid: SIGTERM, then SIGKILL after a grace period.

        Returns its exit code (negative for a signal), or None if it never started.
        """
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _RUNNING.pop(proc.pid, None)
        return proc.returncode

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- starlingctl -----------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run `starlingctl --data-dir DATA_DIR ARGS...` and return its result."""
        return subprocess.run(
            [str(self.binaries.ctl), "--data-dir", str(self.data_dir), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def register(self, user: str, password: str) -> Account:
        """Create an account with `starlingctl register`; raise with its output on failure."""
        res = self.ctl("register", user, self.host, password)
        if res.returncode != 0:
            raise RuntimeError(
                f"starlingctl register {user} {self.host} exited {res.returncode}:\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return Account(user=user, host=self.host, password=password)

    def new_account(self, prefix: str = "user") -> Account:
        """Register an account with a unique name, so tests sharing a server never collide."""
        return self.register(unique_name(prefix), "pw-" + uuid.uuid4().hex[:12])

    # -- diagnostics -----------------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def unique_name(prefix: str) -> str:
    """A fresh, valid localpart."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
