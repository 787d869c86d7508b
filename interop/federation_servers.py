"""Prosody and ejabberd (Debian packages) run as child processes for the federation tests.

Owns: certificates (self-signed, or issued by a test CA, with the openssl CLI), each
server's config in a temp dir, name resolution without DNS, starting the server with a
deadline, registering users with its own tool, and stopping it by pid. Never starts or
stops the system services, never kills anything it did not start.

Name resolution (no real DNS anywhere):
- Starling: `s2s_static_routes` (domain -> ip:port).
- Prosody 0.12 has no static routes and its pure-Lua resolver (no luaunbound installed)
  does not read /etc/hosts, so the test loads a small plugin of its own,
  `mod_test_s2s_routes`, that answers `net.resolvers.service` lookups for the listed
  domains with a fixed address (`xmpp-server`) or nothing (`xmpps-server`); other
  domains still go to DNS.
- ejabberd 23.01 resolves SRV records with Erlang's resolver but A/AAAA records with
  getaddrinfo (the C library), so it gets both: an Erlang inetrc (`ERL_INETRC`, read by
  `ejabberdctl` from the config dir) with `{host, IP, [Domain]}` entries and no
  resolv.conf, so SRV lookups fail at once; and a private /etc/hosts, bind-mounted in a
  mount namespace (`unshare --mount`) for the ejabberd process only. Every outgoing s2s
  connection goes to `outgoing_s2s_port`, Starling's s2s port. Needs root (as does
  switching to the ejabberd user).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server_process import Account, unique_name

READY_TIMEOUT = 45.0
STOP_TIMEOUT = 10.0
TOOL_TIMEOUT = 30.0

_RUNNING: dict[int, subprocess.Popen[bytes]] = {}


def _kill_leftovers() -> None:
    for proc in list(_RUNNING.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


atexit.register(_kill_leftovers)


def free_port(ip: str) -> int:
    """A port that was free on `ip` a moment ago (each server has its own address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def _accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


# -- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key for one domain; `combined` holds both (ejabberd, Starling)."""

    cert: Path
    key: Path
    combined: Path


def _leaf_ext(dir_: Path, domain: str) -> Path:
    ext = dir_ / f"{domain}.ext"
    # Both usages: the same certificate is the server's and, on outgoing s2s, the client's.
    ext.write_text(
        f"subjectAltName=DNS:{domain}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    return ext


def _combine(cert: Path, key: Path) -> CertFiles:
    combined = cert.with_suffix(".combined.pem")
    combined.write_text(cert.read_text() + key.read_text())
    for p in (cert, key, combined):
        p.chmod(0o644)
    return CertFiles(cert=cert, key=key, combined=combined)


def self_signed(dir_: Path, domain: str) -> CertFiles:
    """A self-signed certificate for `domain` (validates nowhere: dialback it is)."""
    cert, key = dir_ / f"{domain}.crt", dir_ / f"{domain}.key"
    _run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", f"/CN={domain}", "-keyout", str(key), "-out", str(cert),
            "-addext", f"subjectAltName=DNS:{domain}", "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "extendedKeyUsage=serverAuth,clientAuth",
        ]
    )  # fmt: skip
    return _combine(cert, key)


class TestCa:
    """A certificate authority made for one test run; issues leaf certificates."""

    __test__ = False

    def __init__(self, dir_: Path) -> None:
        self.dir = dir_
        self.cert = dir_ / "ca.crt"
        self.key = dir_ / "ca.key"
        _run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-days", "2", "-subj", "/CN=Starling federation test CA",
                "-keyout", str(self.key), "-out", str(self.cert),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )  # fmt: skip
        self.cert.chmod(0o644)

    def issue(self, domain: str) -> CertFiles:
        cert, key, csr = (self.dir / f"{domain}.{s}" for s in ("crt", "key", "csr"))
        _run(
            [
                "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-subj", f"/CN={domain}", "-keyout", str(key), "-out", str(csr),
            ]
        )  # fmt: skip
        _run(
            [
                "openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                "-CAkey", str(self.key), "-CAcreateserial", "-days", "2",
                "-extfile", str(_leaf_ext(self.dir, domain)), "-out", str(cert),
            ]
        )  # fmt: skip
        return _combine(cert, key)


# -- common process handling -------------------------------------------------------------


@dataclass
class Remote:
    """What the tests need to know about a remote server (duck-types `StarlingServer` for
    `xmpp_client.ClientFactory`)."""

    name: str
    host: str
    ip: str
    starttls_port: int
    s2s_port: int
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    accounts: list[Account] = field(default_factory=list)

    @property
    def tls_port(self) -> int:
        return self.starttls_port

    def is_running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, ports: list[int]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if all(_accepts(self.ip, p) for p in ports):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not listening on {self.ip}:{ports} within {READY_TIMEOUT}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the server's pid, SIGKILL after a grace period; reap the launcher."""
        if self.pid is not None and _alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            _RUNNING.pop(self.proc.pid, None)

    def new_account(self, prefix: str = "user") -> Account:
        return self.register(unique_name(prefix), "pw-" + unique_name("x")[-10:])

    def register(self, user: str, password: str) -> Account:  # pragma: no cover - overridden
        raise NotImplementedError


def _alive(pid: int) -> bool:
    try:
        # A zombie child still "exists"; treat it as gone.
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def _descendant(root: int, name: str) -> int | None:
    """The pid of a process named `name` among `root`'s descendants (found through
    /proc/PID/task/*/children), so we only ever signal processes we started."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == name and pid != root:
                    return pid
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return None


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    _RUNNING[proc.pid] = proc
    return proc


# -- Prosody -----------------------------------------------------------------------------

# Answers s2s lookups for the domains in `test_s2s_routes` without DNS (see the module doc).
PROSODY_ROUTES_PLUGIN = """\
-- Test-only: static s2s routes for the Starling federation tests.
local basic = require "net.resolvers.basic";
local manual = require "net.resolvers.manual";
local service = require "net.resolvers.service";
local routes = module:get_option("test_s2s_routes", {});
local original = rawget(service, "test_original_new") or service.new;
service.test_original_new = original;
service.new = function(hostname, srv, conn_type, extra)
    local route = routes[hostname];
    if not route then
        return original(hostname, srv, conn_type, extra);
    end
    if srv ~= "xmpp-server" then
        return manual.new({}, conn_type, extra);
    end
    return basic.new(route[1], route[2], conn_type or "tcp", extra);
end
module:log("info", "static s2s routes installed");
"""


@dataclass
class ProsodyServer(Remote):
    config_path: Path = Path()

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        host: str,
        ip: str,
        certs: CertFiles,
        routes: dict[str, tuple[str, int]],
        cafile: Path | None = None,
        secure: bool = False,
    ) -> ProsodyServer:
        """Prosody for `host` on `ip`. `secure`: `s2s_secure_auth` (certificates must
        validate against `cafile`, so SASL EXTERNAL; no dialback)."""
        if shutil.which("prosody") is None:
            raise FileNotFoundError("prosody not installed (scripts/test.sh installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        plugins = workdir / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "mod_test_s2s_routes.lua").write_text(PROSODY_ROUTES_PLUGIN)
        c2s, s2s = free_port(ip), free_port(ip)
        srv = cls(
            name="prosody",
            host=host,
            ip=ip,
            starttls_port=c2s,
            s2s_port=s2s,
            workdir=workdir,
            log_path=workdir / "prosody.log",
            config_path=workdir / "prosody.cfg.lua",
        )
        lua_routes = "".join(f'["{d}"] = {{ "{a}", {p} }}; ' for d, (a, p) in routes.items())
        cafile_line = f'cafile = "{cafile}";' if cafile else ""
        modules = '"roster"; "saslauth"; "tls"; "disco"; "ping"; "test_s2s_routes";'
        if not secure:
            modules += ' "dialback";'
        srv.config_path.write_text(
            f"""\
run_as_root = true
pidfile = "{workdir}/prosody.pid"
data_path = "{workdir}/data"
plugin_paths = {{ "{plugins}" }}
log = {{ {{ levels = {{ min = "debug" }}, to = "file", filename = "{srv.log_path}" }} }}
interfaces = {{ "{ip}" }}
local_interfaces = {{ "{ip}" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ {s2s} }}
s2s_direct_tls_ports = {{ }}
use_ipv6 = false
authentication = "internal_hashed"
storage = "internal"
c2s_require_encryption = true
s2s_require_encryption = true
s2s_secure_auth = {"true" if secure else "false"}
certificates = "{workdir}/no-such-dir"
ssl = {{ certificate = "{certs.cert}"; key = "{certs.key}"; {cafile_line} }}
modules_enabled = {{ {modules} }}
modules_disabled = {{ "offline"; "s2s_bidi"; }}
test_s2s_routes = {{ {lua_routes} }}
VirtualHost "{host}"
"""
        )
        srv.proc = _spawn(["prosody", "--config", str(srv.config_path), "-F"], workdir / "prosody.out")
        srv.pid = srv.proc.pid
        srv._wait_ready([c2s, s2s])
        return srv

    def register(self, user: str, password: str) -> Account:
        _run(["prosodyctl", "--config", str(self.config_path), "register", user, self.host, password])
        return Account(user=user, host=self.host, password=password)


# -- ejabberd ----------------------------------------------------------------------------


def _ejabberd_user() -> tuple[int, int, str]:
    entry = pwd.getpwnam("ejabberd")
    return entry.pw_uid, entry.pw_gid, entry.pw_dir


def _as_ejabberd() -> list[str]:
    """Run as the ejabberd user (its Erlang cookie lives in its home). setpriv, not su:
    no PAM session, so nothing resets the environment or limits."""
    if os.geteuid() != 0:
        return []
    _, _, home = _ejabberd_user()
    return ["setpriv", "--reuid=ejabberd", "--regid=ejabberd", "--init-groups", "env", f"HOME={home}"]


@dataclass
class EjabberdServer(Remote):
    config_dir: Path = Path()

    @classmethod
    def start(
        cls,
        *,
        host: str,
        ip: str,
        certs: CertFiles,
        routes: dict[str, tuple[str, int]],
        outgoing_port: int,
        cafile: Path | None = None,
        secure: bool = False,
    ) -> EjabberdServer:
        """ejabberd for `host` on `ip`, in a fresh directory under /tmp owned by the
        ejabberd user (pytest's own temp dirs are private to root). `routes` become inetrc
        host entries; every outgoing s2s connection goes to `outgoing_port`. `secure`:
        no `mod_s2s_dialback`, TLS required, so only SASL EXTERNAL authenticates."""
        if shutil.which("ejabberdctl") is None:
            raise FileNotFoundError("ejabberd not installed (scripts/test.sh installs it)")
        workdir = Path(tempfile.mkdtemp(prefix="starling-fed-ejabberd."))
        workdir.chmod(0o755)
        for sub in ("spool", "logs"):
            (workdir / sub).mkdir()
        c2s, s2s, dist = free_port(ip), free_port(ip), free_port("127.0.0.1")
        srv = cls(
            name="ejabberd",
            host=host,
            ip=ip,
            starttls_port=c2s,
            s2s_port=s2s,
            workdir=workdir,
            log_path=workdir / "logs" / "ejabberd.log",
            config_dir=workdir,
        )
        pem = workdir / "server.pem"
        shutil.copy(certs.combined, pem)
        ca_line = ""
        if cafile:
            shutil.copy(cafile, workdir / "ca.pem")
            ca_line = f's2s_cafile: "{workdir}/ca.pem"\n'
        dialback = "" if secure else "  mod_s2s_dialback: {}\n"
        (workdir / "ejabberd.yml").write_text(
            f"""\
hosts: ["{host}"]
loglevel: debug
certfiles: ["{pem}"]
{ca_line}s2s_use_starttls: {"required" if secure else "optional"}
s2s_dns_timeout: 2
s2s_dns_retries: 1
outgoing_s2s_port: {outgoing_port}
outgoing_s2s_families: [ipv4]
auth_method: internal
listen:
  - {{port: {c2s}, ip: "{ip}", module: ejabberd_c2s, starttls: true}}
  - {{port: {s2s}, ip: "{ip}", module: ejabberd_s2s_in}}
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
{dialback}"""
        )
        node = f"starlingfed{os.getpid()}x{dist}@localhost"
        (workdir / "ejabberdctl.cfg").write_text(
            f"ERLANG_NODE={node}\nERL_DIST_PORT={dist}\nINET_DIST_INTERFACE=127.0.0.1\n"
            "EJABBERD_BYPASS_WARNINGS=true\n"
        )
        hosts = "".join(
            f'{{host, {{{addr.replace(".", ",")}}}, ["{domain}"]}}.\n' for domain, (addr, _) in routes.items()
        )
        # No resolv.conf: the SRV lookups (Erlang's inet_res) fail at once.
        (workdir / "inetrc").write_text(
            hosts
            + '{host, {127,0,0,1}, ["localhost"]}.\n'
            + '{resolv_conf, "/dev/null"}.\n{lookup, [file, native]}.\n'
        )
        # A/AAAA lookups go through getaddrinfo (the C library, not inetrc): the VM gets a
        # private /etc/hosts in its own mount namespace.
        etc_hosts = workdir / "hosts"
        etc_hosts.write_text(
            "127.0.0.1 localhost\n" + "".join(f"{addr} {domain}\n" for domain, (addr, _) in routes.items())
        )
        if os.geteuid() == 0:
            uid, gid, _ = _ejabberd_user()
            for root, dirs, files in os.walk(workdir):
                for name in [*dirs, *files, "."]:
                    os.chown(os.path.join(root, name), uid, gid)
        private_hosts = [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(etc_hosts),
        ]  # fmt: skip
        srv.proc = _spawn(
            [*private_hosts, *_as_ejabberd(), *srv._ctl_args(), "foreground"], workdir / "foreground.log"
        )
        srv.pid = srv.proc.pid
        try:
            srv._wait_ready([c2s, s2s])
            # The launcher is a shell script whose child runs the Erlang VM: stop the VM.
            srv.pid = _descendant(srv.proc.pid, "beam.smp") or srv.proc.pid
            # Listening comes before the node accepts ejabberdctl; wait for `status`.
            deadline = time.monotonic() + READY_TIMEOUT
            while srv.ctl("status").returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ejabberdctl status never succeeded:\n{srv.log_tail()}")
                time.sleep(0.3)
        except BaseException:
            srv.stop()
            raise
        return srv

    def _ctl_args(self) -> list[str]:
        d = self.config_dir
        return ["ejabberdctl", "--config-dir", str(d), "--spool", str(d / "spool"), "--logs", str(d / "logs")]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_as_ejabberd(), *self._ctl_args(), *args],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
            cwd=self.config_dir,
        )

    def register(self, user: str, password: str) -> Account:
        res = self.ctl("register", user, self.host, password)
        if res.returncode != 0:
            raise RuntimeError(f"ejabberdctl register exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return Account(user=user, host=self.host, password=password)

    def stop(self) -> None:
        """Stops the VM by its pid (a descendant of the launcher we started), then reaps
        the launcher."""
        super().stop()
        if os.environ.get("KEEP_FEDERATION_DIRS") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
