"""Debian hosts on this machine that Ansible configures for real (the role tests).

Each host is a ``systemd-nspawn`` container booting systemd from an overlay over one
cached Debian root (``scripts/testhosts.sh base``: debootstrap, plus the roles' packages
in its apt cache), in a network namespace of its own on a private bridge. Ansible
reaches it over SSH as root, as it would a server. Services in a host listen in its own
namespace, so they never clash with the shared RabbitMQ and FerretDB on this machine's
127.0.0.1; this machine is ``GATEWAY`` on the bridge, where tests run the processes
the hosts must reach (a web app for device logins, a TCP forwarder to FerretDB).

The hosts have no route to the Internet: the roles' apt tasks install from the apt
cache of the base root, whose package lists count as fresh (``cache_valid_time``).
One session at a time holds ``/tmp/fairway-testhosts.lock`` while its hosts run.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.deploy.tools import ANSIBLE_DIR, ROOT, VENV_BIN, tool

SUBNET = os.environ.get("FAIRWAY_TESTHOSTS_SUBNET", "10.215.0")  # a /24 nothing else uses
GATEWAY = f"{SUBNET}.1"  # this machine, on the test hosts' bridge
BRIDGE = "fwth0"
LOCK = Path("/tmp/fairway-testhosts.lock")
NSPAWN_RUN = "/run/systemd/nspawn"
STATE = Path("/run/fairway-testhosts")  # pid files, to clean up after a killed session
SCRIPT = ROOT / "scripts" / "testhosts.sh"
# Where scripts/testhosts.sh keeps the base root; the wheelhouse goes beside it.
CACHE = Path(os.environ.get("FAIRWAY_TESTHOSTS_CACHE", "/var/cache/fairway/testhosts"))
SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
]  # fmt: skip
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M
)
TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(.+?)\] \**$")
EVENT = re.compile(r"^(ok|changed|fatal|failed|skipping): \[([^\]]+?)(?: -> [^\]]+)?\]")


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def base_root() -> Path:
    """The cached Debian root (built by ``scripts/testhosts.sh base`` if missing)."""
    result = subprocess.run(
        [str(SCRIPT), "base"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "FAIRWAY_TESTHOSTS_LOCKED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def _children(pid: int) -> list[int]:
    with suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def kill_container(nspawn_pid: int) -> None:
    """SIGKILL the container's init (so its whole PID namespace), then nspawn.

    Killing nspawn alone would leave the container running."""
    own = os.readlink("/proc/self/ns/pid")
    todo = _children(nspawn_pid)
    while todo:
        pid = todo.pop()
        with suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") != own:
                os.kill(pid, signal.SIGKILL)
                continue
        todo.extend(_children(pid))
    with suppress(ProcessLookupError):
        os.kill(nspawn_pid, signal.SIGKILL)


@dataclass
class Host:
    """One test host: a booted container at ``address`` named ``name``."""

    name: str
    address: str
    dir: Path
    key: Path
    binds: dict[str, str] = field(default_factory=dict)  # this machine's path -> host path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        """The host's file system as seen from this machine (the overlay's merged view)."""
        return self.dir / "root"

    @property
    def netns(self) -> str:
        return f"fwth-{self.name}"

    def path(self, path: str) -> Path:
        """A path inside the host, as seen from this machine."""
        return self.root / path.lstrip("/")

    def ssh(
        self, command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host as root; with ``check``, fail on non-zero exit."""
        result = subprocess.run(
            ["ssh", *SSH_OPTIONS, "-i", str(self.key), f"root@{self.address}", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"{self.name}$ {command}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def boot(self) -> None:
        """Start the container (systemd as its init) and wait until SSH answers."""
        binds = [f"--bind-ro={src}:{dest}" for src, dest in self.binds.items()]
        with open(self.dir / "console.log", "ab") as console:
            self.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    f"--directory={self.root}",
                    f"--machine={self.name}",
                    "--register=no",
                    "--keep-unit",
                    "--resolv-conf=off",
                    "--link-journal=no",
                    "--console=read-only",
                    f"--network-namespace-path=/run/netns/{self.netns}",
                    *binds,
                    "--boot",
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (STATE / f"{self.name}.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at boot: {self.console()[-2000:]}")
            probe = subprocess.run(
                ["ssh", *SSH_OPTIONS, "-o", "ConnectTimeout=1", "-i", str(self.key),
                 f"root@{self.address}", "systemctl is-system-running --wait"],
                capture_output=True, text=True, timeout=90, check=False,
            )  # fmt: skip
            if probe.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not boot: {probe.stderr}{self.console()[-2000:]}"
                )
            time.sleep(0.3)

    def shutdown(self, timeout: float = 60) -> None:
        """Power off cleanly (services stop as on a real shutdown); keep the disk."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn asks systemd to power off
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        (STATE / f"{self.name}.pid").unlink(missing_ok=True)

    def console(self) -> str:
        """What the container printed on its console (boot messages)."""
        with suppress(OSError):
            return (self.dir / "console.log").read_text(errors="replace")
        return ""


@dataclass
class Run:
    """One ``ansible-playbook`` run: exit code, output, recap and task events per host."""

    returncode: int
    stdout: str
    stderr: str
    recap: dict[str, dict[str, int]]
    events: list[tuple[str, str, str, str]]  # (task, status, host, rest of the line)

    def changed(self, host: str | None = None) -> int:
        """``changed=`` of the recap, summed over hosts unless ``host`` is given."""
        hosts = [host] if host else list(self.recap)
        return sum(self.recap[h]["changed"] for h in hosts)

    def tasks(self, status: str) -> list[str]:
        """Task names that reported ``status`` (ok, changed, fatal, skipping) on some host."""
        return [task for task, st, _, _ in self.events if st == status]

    def failure(self) -> tuple[str, str]:
        """(task, message) of the first failed task."""
        for task, status, _, rest in self.events:
            if status in ("fatal", "failed"):
                return task, rest
        raise AssertionError(f"no task failed:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        """The end of the output, for assertion messages."""
        return self.stdout[-chars:] + self.stderr[-2000:]


def parse(returncode: int, stdout: str, stderr: str) -> Run:
    """Parse the default callback's output."""
    recap = {
        m.group(1): {
            "ok": int(m.group(2)),
            "changed": int(m.group(3)),
            "unreachable": int(m.group(4)),
            "failed": int(m.group(5)),
        }
        for m in RECAP.finditer(stdout)
    }
    events: list[tuple[str, str, str, str]] = []
    task = ""
    for line in stdout.splitlines():
        if header := TASK.match(line):
            task = header.group(1)
        elif event := EVENT.match(line):
            events.append((task, event.group(1), event.group(2), line[event.end() :]))
    return Run(returncode, stdout, stderr, recap, events)


class TestNetwork:
    """The bridge and the hosts on it; a ``with`` block holds the session lock."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hosts: dict[str, Host] = {}
        self.key = workdir / "id_ed25519"
        self.base: Path | None = None
        self._lock: Any = None
        # ssh's control sockets need a short path (108 bytes at most).
        self.control_dir = Path(f"/tmp/fwth-cp-{os.getpid()}")

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> TestNetwork:
        assert os.geteuid() == 0, "the Ansible host tests need root (containers, namespaces)"
        for binary in ("systemd-nspawn", "debootstrap", "ssh", "ip"):
            if shutil.which(binary) is None:
                _sh(str(SCRIPT), "tools")
                break
        self._lock = open(LOCK, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            STATE.mkdir(parents=True, exist_ok=True)
            self._clean_stale()
            self.base = base_root()
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
            self.control_dir.mkdir(mode=0o700, exist_ok=True)
            _sh("ip", "link", "add", BRIDGE, "type", "bridge")
            _sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
            _sh("ip", "link", "set", BRIDGE, "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name in list(self.hosts):
            self.remove(name)
        _sh("ip", "link", "del", BRIDGE, check=False)
        shutil.rmtree(self.control_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _clean_stale(self) -> None:
        """What a killed session left: containers (by pid file), mounts, namespaces, bridge."""
        for pid_file in STATE.glob("*.pid"):
            with suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                if b"systemd-nspawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    kill_container(pid)
                    for _ in range(100):
                        if not Path(f"/proc/{pid}").exists():
                            break
                        time.sleep(0.1)
            pid_file.unlink(missing_ok=True)
        for mount_file in STATE.glob("*.mount"):
            _sh("umount", "-l", mount_file.read_text(), check=False)
            mount_file.unlink(missing_ok=True)
        for line in _sh("ip", "netns", "list").stdout.splitlines():
            if line.startswith("fwth-"):
                _sh("ip", "netns", "del", line.split()[0], check=False)
        _sh("ip", "link", "del", BRIDGE, check=False)

    # -- hosts ---------------------------------------------------------------------
    def add(self, name: str, octet: int, binds: dict[str, str] | None = None) -> Host:
        """Create and boot host ``name`` at ``<SUBNET>.<octet>``."""
        assert self.base is not None
        assert name not in self.hosts and 1 < octet < 255
        # A directory per boot of a name (a name may come back in a later test).
        directory = self.workdir / f"{name}.{sum(1 for _ in self.workdir.glob(name + '.*'))}"
        host = Host(name, f"{SUBNET}.{octet}", directory, self.key, binds or {})
        for part in ("upper", "work", "root"):
            (host.dir / part).mkdir(parents=True)
        _sh(
            "mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={self.base},upperdir={host.dir}/upper,workdir={host.dir}/work",
            str(host.root),
        )  # fmt: skip
        (STATE / f"{name}.mount").write_text(str(host.root))
        self.hosts[name] = host
        root = host.root
        (root / "etc/hostname").write_text(f"{name}\n")
        with open(root / "etc/hosts", "a") as hosts:
            hosts.write(f"127.0.1.1\t{name}\n")  # as Debian's installer writes it
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        # The apt lists of the base root count as fresh: no apt-get update without Internet.
        stamp = root / "var/lib/apt/periodic/update-success-stamp"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "link", "add", host.netns, "type", "veth", "peer", "name", "eth0",
            "netns", host.netns)  # fmt: skip
        _sh("ip", "link", "set", host.netns, "master", BRIDGE, "up")
        _sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
        _sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        _sh("ip", "-n", host.netns, "route", "add", "default", "via", GATEWAY)
        host.boot()
        return host

    def remove(self, name: str) -> None:
        """Stop host ``name`` at once and delete it (disk, namespace)."""
        host = self.hosts.pop(name)
        with suppress(OSError):
            root = os.stat(host.root)
            # What nspawn removes itself when it exits cleanly (not after a SIGKILL).
            Path(f"{NSPAWN_RUN}/locks/inode-{root.st_dev}:{root.st_ino}").unlink(missing_ok=True)
        if host.proc is not None:
            kill_container(host.proc.pid)
            host.proc.wait(30)
            host.proc = None
        shutil.rmtree(f"{NSPAWN_RUN}/propagate/{name}", ignore_errors=True)
        (STATE / f"{name}.pid").unlink(missing_ok=True)
        _sh("umount", str(host.root), check=False)
        (STATE / f"{name}.mount").unlink(missing_ok=True)
        _sh("ip", "netns", "del", host.netns, check=False)
        _sh("ip", "link", "del", host.netns, check=False)
        for part in ("upper", "work", "root"):  # the console log stays, for a failure's story
            shutil.rmtree(host.dir / part, ignore_errors=True)

    def restart(self, name: str) -> None:
        """Power the host off cleanly and boot it again (same disk)."""
        host = self.hosts[name]
        host.shutdown()
        host.boot()

    # -- Ansible -------------------------------------------------------------------
    def inventory(self, groups: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path:
        """Write a YAML inventory: {group: {host: host vars}}; test hosts get their address."""
        doc: dict[str, Any] = {"all": {"children": {}}}
        for group, members in groups.items():
            hosts = {}
            for name, hostvars in members.items():
                known = self.hosts.get(name)
                hosts[name] = {**({"ansible_host": known.address} if known else {}), **hostvars}
            doc["all"]["children"][group] = {"hosts": hosts}
        path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
        return path

    def copy_inventory(
        self, name: str, dest: Path, vault: dict[str, Any], addresses: dict[str, str] | None = None
    ) -> Path:
        """A copy of ``ansible/inventories/<name>``, group_vars as shipped, with the test
        hosts' addresses (and ``addresses``: other hosts') in place of the example ones,
        and ``vault`` as its vault.yml."""
        shutil.copytree(ANSIBLE_DIR / "inventories" / name, dest)
        doc = yaml.safe_load((dest / "hosts.yml").read_text())
        known = {name: host.address for name, host in self.hosts.items()} | (addresses or {})

        def readdress(node: Any) -> None:
            if not isinstance(node, dict):
                return
            for host, hostvars in (node.get("hosts") or {}).items():
                if host in known and isinstance(hostvars, dict) and "ansible_host" in hostvars:
                    hostvars["ansible_host"] = known[host]
            for child in (node.get("children") or {}).values():
                readdress(child)

        readdress(doc["all"])
        (dest / "hosts.yml").write_text(yaml.safe_dump(doc))
        (dest / "group_vars/all/vault.yml").write_text(json.dumps(vault))
        return dest / "hosts.yml"

    def playbook(
        self,
        inventory: Path,
        variables: dict[str, Any],
        playbook: str = "site.yml",
        *args: str,
        timeout: float = 900,
    ) -> Run:
        """``ansible-playbook`` from ``ansible/`` over SSH to the test hosts; its output
        also goes to ``<inventory dir>/ansible-<n>.log`` as it runs."""
        stamp = time.monotonic_ns()
        vars_file = inventory.parent / f"vars-{stamp}.json"
        vars_file.write_text(json.dumps(variables))
        log = inventory.parent / f"ansible-{stamp}.log"
        env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.key),
            "ANSIBLE_REMOTE_USER": "root",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_SSH_ARGS": " ".join(
                [*SSH_OPTIONS, "-o", "ControlMaster=auto", "-o", "ControlPersist=30s"]
            ),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_FORKS": "10",
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-local"),
        }
        command = [tool("ansible-playbook"), "-i", str(inventory), playbook, "-e", f"@{vars_file}"]
        with open(log, "w") as out, open(log.with_suffix(".err"), "w+") as err:
            # A session of its own: its forked workers end with it on a timeout or an interrupt.
            proc = subprocess.Popen(
                [*command, *args], cwd=ANSIBLE_DIR, env=env, stdout=out, stderr=err,
                start_new_session=True,
            )  # fmt: skip
            try:
                returncode = proc.wait(timeout)
            except BaseException:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            err.seek(0)
            stderr = err.read()
        return parse(returncode, log.read_text(), stderr)


# -- what an operator does before the roles run ------------------------------------------
def fresh_vault() -> dict[str, str]:
    """Every variable of the inventories' vault.yml.example, freshly generated as it says."""
    names = [
        "rabbitmq_erlang_cookie", "rabbitmq_fairway_password", "rabbitmq_fairway_web_password",
        "rabbitmq_admin_password", "mongodb_admin_password", "mongodb_fairway_password",
        "fairway_secret_key", "fairway_operator_password",
    ]  # fmt: skip
    found = {f"vault_{name}": secrets.token_urlsafe(24) for name in names}
    found["vault_mongodb_keyfile_content"] = base64.b64encode(secrets.token_bytes(96)).decode()
    return found


def install_broker_tls(host: Host, ca: Any, directory: str = "/etc/rabbitmq/tls") -> None:
    """The PKI tooling's step before the rabbitmq role: ``ca.pem``, ``server.pem`` (naming
    the host and its address) and ``server-key.pem`` (root's alone; the role lets the
    rabbitmq user read it) in ``directory``. ``ca`` is a ``trustme.CA``."""
    cert = ca.issue_cert(host.name, host.address)
    tls = host.path(directory)
    tls.mkdir(parents=True)
    (tls / "server.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    (tls / "ca.pem").write_bytes(ca.cert_pem.bytes())
    key = tls / "server-key.pem"
    key.write_bytes(cert.private_key_pem.bytes())
    key.chmod(0o600)


# -- reaching this machine's services from the hosts --------------------------------------
@contextmanager
def forward(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[None]:
    """Relay TCP connections from ``listen`` (e.g. on ``GATEWAY``) to ``target``."""
    server = socket.create_server(listen)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not stop.is_set():
                for key, _ in sel.select(0.5):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        server.close()
