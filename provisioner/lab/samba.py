"""A real Samba AD domain controller on 127.0.0.1, for tests and benchmarks.

Samba listens on the fixed LDAP ports (389/636), so one DC serves a whole network namespace. A
small registry in the cache dir (``dc.json`` under an ``flock``) records the running DC and the
processes using it, so parallel test workers can share one DC (``shared=True``) and a DC left
behind by a crashed run is recognised and stopped::

    {"pid": 4242, "pid_started": 901234, "targetdir": "<workdir>/samba", "realm": "NFON.TEST",
     "netbios": "NFON", "owners": [[4100, 899000], [4101, 899010]]}

A fresh provision takes seconds, so the provisioned targetdir is cached as a ``.tgz`` keyed by the
Samba version and the domain names; starting from the cache takes well under a second::

    dc = SambaDC.start(tmp_path)            # restore (or provision), new TLS cert, start, wait
    dc.ldaps_url, dc.netbios                # 'ldaps://127.0.0.1:636', 'NFON'
    dc.ca_file                              # <workdir>/samba/private/tls/ca.pem
    with dc.admin_connection() as conn:
        create_users(conn, dc.users_dn, [LabUser("jdoe", display_name="Jane Doe")], realm=dc.realm)
    dc.stop()

Samba's Python bindings exist only for the system interpreter, so everything here drives the
``samba-tool`` and ``samba`` programs as subprocesses and talks to the DC over LDAP.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldap3.utils.dn import escape_rdn

from provisioner.errors import ProvisionerError
from provisioner.lab.tls import ensure_lab_tls
from provisioner.secrets import Secret
from provisioner.transports.ldap import LDAPConnection, LDAPOperationError, LDAPSettings

HOST = "127.0.0.1"
LDAP_PORT = 389
LDAPS_PORT = 636
DEFAULT_REALM = "NFON.TEST"
DEFAULT_NETBIOS = "NFON"
SAMBA_PACKAGES = ("samba", "samba-ad-dc", "samba-ad-provision")

# Bump when the provisioning recipe changes, so stale cached targetdirs are not reused.
_RECIPE_VERSION = 1
# The provisioned smb.conf holds the targetdir's absolute path; the cache stores this instead.
_TARGETDIR_PLACEHOLDER = "@LAB_TARGETDIR@"
_ADMIN_PASSWORD_FILE = "lab-admin-password"
# Without samba-ad-provision, provisioning fails for want of this schema file.
_SCHEMA_FILE = Path("/usr/share/samba/setup/ad-schema/AD_DS_Attributes__Windows_Server_2012_R2.ldf")
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0

# userAccountControl flags (MS-ADTS 2.2.16).
UF_ACCOUNTDISABLE = 0x2
UF_PASSWD_NOTREQD = 0x20
UF_NORMAL_ACCOUNT = 0x200


class SambaError(ProvisionerError):
    """The lab DC could not be installed, provisioned, started or stopped."""


# -- installation ------------------------------------------------------------------------------


def _find_program(name: str) -> str | None:
    # /usr/sbin is not on a normal user's PATH, but that is where Debian puts samba.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def samba_missing() -> list[str]:
    """The Samba packages whose files are absent; empty when the DC can be provisioned."""
    missing = []
    if _find_program("samba") is None:
        missing += ["samba", "samba-ad-dc"]
    if _find_program("samba-tool") is None and "samba" not in missing:
        missing.append("samba")
    if not _SCHEMA_FILE.is_file():
        missing.append("samba-ad-provision")
    return missing


def ensure_samba_installed() -> None:
    """Install Samba's AD DC packages with apt-get when root; otherwise say what to install."""
    if not samba_missing():
        return
    command = ["apt-get", "install", "-y", "--no-install-recommends", *SAMBA_PACKAGES]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SambaError(f"Samba AD DC is not installed; run as root: {' '.join(command)}")
    with _locked("install"):
        if not samba_missing():
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        installed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if installed.returncode != 0:
            # Usually an empty or outdated package list: refresh it once and retry.
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            installed = subprocess.run(
                command, env=env, capture_output=True, text=True, check=False
            )
        if installed.returncode != 0 or samba_missing():
            raise SambaError(
                f"installing Samba failed ({_tail(installed.stdout + installed.stderr)}); "
                f"run: {' '.join(command)}"
            )


def _samba_tool() -> str:
    return _find_program("samba-tool") or "samba-tool"


def samba_version() -> str:
    """``4.17.12-Debian`` for ``samba --version`` printing ``Version 4.17.12-Debian``."""
    program = _find_program("samba")
    if program is None:
        raise SambaError("samba is not installed; call ensure_samba_installed() first")
    out = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("Version ").strip() or "unknown"


# -- cache and registry ------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$PROVISIONER_CACHE/samba``, else ``provisioner/samba`` under XDG_CACHE_HOME or ~/.cache."""
    if os.environ.get("PROVISIONER_CACHE"):
        root = Path(os.environ["PROVISIONER_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "provisioner"
    path = root / "samba"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock shared by every process on this machine using the same cache dir."""
    with open(cache_dir() / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _process_started(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live, non-zombie process, else ``None``.

    Pairing a pid with its start time tells a reused pid from the process we recorded.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in (...) may contain spaces
    state, started = fields[0], int(fields[19])
    return None if state in ("Z", "X") else started


def _is_alive(pid: int, started: int) -> bool:
    return _process_started(pid) == started


@dataclass
class _Registry:
    pid: int
    pid_started: int
    targetdir: str
    realm: str
    netbios: str
    owners: list[list[int]] = field(default_factory=list)

    @staticmethod
    def path() -> Path:
        return cache_dir() / "dc.json"

    @classmethod
    def load(cls) -> _Registry | None:
        try:
            return cls(**json.loads(cls.path().read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        self.path().write_text(json.dumps(self.__dict__))

    @classmethod
    def clear(cls) -> None:
        cls.path().unlink(missing_ok=True)

    def live_owners(self) -> list[list[int]]:
        return [owner for owner in self.owners if _is_alive(owner[0], owner[1])]


def _me() -> list[int]:
    started = _process_started(os.getpid())
    assert started is not None  # we are running
    return [os.getpid(), started]


# -- provisioning ------------------------------------------------------------------------------


def _samba_env() -> dict[str, str]:
    # samba-tool runs on the system Python; our venv's variables must not leak into it.
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {key: value for key, value in os.environ.items() if key not in drop}


def _archive_path(realm: str, netbios: str) -> Path:
    version = samba_version().replace("/", "_")
    return cache_dir() / f"dc-{version}-{realm}-{netbios}-r{_RECIPE_VERSION}.tgz"


def _provision_archive(realm: str, netbios: str) -> Path:
    """The cached provisioned targetdir, provisioning it first when there is none."""
    archive = _archive_path(realm, netbios)
    if archive.is_file():
        return archive
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="provision-") as scratch:
        target = Path(scratch) / "dc"
        _provision(target, realm, netbios)
        conf = target / "etc" / "smb.conf"
        conf.write_text(conf.read_text().replace(str(target), _TARGETDIR_PLACEHOLDER))
        partial = archive.with_suffix(".partial")
        partial.touch(mode=0o600)  # it holds the Administrator password and the domain's keys
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(target, arcname=".")
        partial.replace(archive)
    return archive


def _provision(target: Path, realm: str, netbios: str) -> None:
    for sub in ("run", "log"):
        (target / sub).mkdir(parents=True)
    tls = target / "private" / "tls"
    options = {
        "interfaces": HOST,
        "bind interfaces only": "yes",
        "server services": "ldap",
        "ldap server require strong auth": "yes",
        "pid directory": f"{target}/run",
        "ncalrpc dir": f"{target}/run/ncalrpc",
        "winbindd socket directory": f"{target}/run/winbindd",
        "log file": f"{target}/log/log.%m",
        "tls enabled": "yes",
        "tls keyfile": f"{tls}/key.pem",
        "tls certfile": f"{tls}/cert.pem",
        "tls cafile": f"{tls}/ca.pem",
    }
    command = [
        _samba_tool(), "domain", "provision", f"--targetdir={target}", f"--realm={realm}",
        f"--domain={netbios}", "--server-role=dc", "--dns-backend=NONE", "--host-name=dc1",
        f"--host-ip={HOST}", *(f"--option={key}={value}" for key, value in options.items()),
    ]  # fmt: skip
    # No --adminpass: a command line is visible to every user. Samba then generates one and
    # logs it, and we read it from the output, which goes nowhere else.
    done = subprocess.run(command, env=_samba_env(), capture_output=True, text=True, check=False)
    output = done.stdout + done.stderr
    password = next(
        (
            line.split("Admin password:", 1)[1].strip()
            for line in output.splitlines()
            if "Admin password:" in line
        ),
        None,
    )
    if done.returncode != 0 or not password:
        raise SambaError(f"samba-tool domain provision failed: {_tail(_redacted(output))}")
    secret_file = target / _ADMIN_PASSWORD_FILE
    secret_file.touch(mode=0o600)
    secret_file.write_text(password)
    # Samba's default maxPwdAge (42 days) would make binds of a cached provision fail later.
    settings = [
        _samba_tool(), "domain", "passwordsettings", "set", "-s", str(target / "etc" / "smb.conf"),
        "--max-pwd-age=0", "--min-pwd-age=0", "--history-length=0",
    ]  # fmt: skip
    done = subprocess.run(settings, env=_samba_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SambaError(f"samba-tool passwordsettings failed: {_tail(done.stdout + done.stderr)}")


def _restore(archive: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(target, filter="data")
    conf = target / "etc" / "smb.conf"
    conf.write_text(conf.read_text().replace(_TARGETDIR_PLACEHOLDER, str(target)))
    for stale in (target / "run").glob("*.pid"):
        stale.unlink()


def write_tls_files(tls_dir: Path, realm: str) -> None:
    """A lab CA and a server certificate for ``127.0.0.1`` and ``dc1.<realm>``, as Samba wants them.

    Clients verify against ``ca.pem`` with the url ``ldaps://127.0.0.1:636``; no name needs to
    resolve. The key is mode 0600 because Samba refuses a key others can read.
    """
    issued = ensure_lab_tls(tls_dir / "lab-ca", names=(HOST, f"dc1.{realm.lower()}"))
    tls_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(issued.ca_file, tls_dir / "ca.pem")
    shutil.copyfile(issued.cert_file, tls_dir / "cert.pem")
    key_file = tls_dir / "key.pem"
    key_file.unlink(missing_ok=True)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(issued.key_file.read_bytes())


# -- running -----------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def _terminate(pid: int, started: int) -> None:
    """Stop a Samba we started (its process group), waiting until it is gone."""
    if not _is_alive(pid, started):
        return
    for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, _STOP_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)  # samba was started as a session leader: pgid == pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _is_alive(pid, started):
                return
            time.sleep(0.05)
    raise SambaError(f"Samba (pid {pid}) did not stop; kill it: kill -KILL {pid}")


def _stop_leftover_in(target: Path) -> None:
    """Stop a Samba still running from ``target`` (a crashed run that reused this workdir)."""
    pid_file = target / "run" / "samba.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    started = _process_started(pid)
    try:
        # Samba rewrites its command line ("samba: root process"), but keeps the cwd we gave it.
        ours = (
            Path(os.readlink(f"/proc/{pid}/exe")).name == "samba"
            and Path(os.readlink(f"/proc/{pid}/cwd")) == target
        )
    except OSError:
        ours = False
    if started is not None and ours:
        _terminate(pid, started)
    pid_file.unlink(missing_ok=True)


def _launch(target: Path) -> subprocess.Popen[bytes]:
    samba = _find_program("samba") or "samba"
    log = open(target / "log" / "samba.out", "ab")  # noqa: SIM115 (handed to the child)
    with log:
        process = subprocess.Popen(
            [samba, "-i", "-M", "single", "-s", str(target / "etc" / "smb.conf")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=target,
            env=_samba_env(),
            start_new_session=True,  # our own process group, so stop() reaches every child
        )
    deadline = time.monotonic() + _START_TIMEOUT
    while not _port_open(LDAPS_PORT):
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            output = (target / "log" / "samba.out").read_text(errors="replace")
            raise SambaError(
                f"Samba did not start listening on {HOST}:{LDAPS_PORT}: {_tail(output)}"
            )
        time.sleep(0.05)
    return process


@dataclass
class SambaDC:
    """A running lab DC. ``stop()`` it; with ``shared=True`` the last user's stop ends it."""

    targetdir: Path
    realm: str
    netbios: str
    admin_password: Secret = field(repr=False)
    pid: int
    pid_started: int
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{HOST}:{LDAPS_PORT}"

    @property
    def ldap_url(self) -> str:
        """Plain LDAP on 389: use it with StartTLS (Samba refuses a simple bind without it)."""
        return f"ldap://{HOST}:{LDAP_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.targetdir / "private" / "tls" / "ca.pem"

    @property
    def domain_dn(self) -> str:
        """``DC=nfon,DC=test`` for realm ``NFON.TEST``."""
        return ",".join(f"DC={part}" for part in self.realm.lower().split("."))

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{self.domain_dn}"

    @property
    def users_dn(self) -> str:
        """The default container for users, ``CN=Users,<domain>``."""
        return f"CN=Users,{self.domain_dn}"

    def ldap_settings(
        self, bind_user: str | None = None, bind_password: Secret | None = None
    ) -> LDAPSettings:
        """Settings for LDAPS with verification against the lab CA (as Administrator by default)."""
        return LDAPSettings(
            url=self.ldaps_url,
            bind_user=bind_user or self.admin_dn,
            bind_password=bind_password or self.admin_password,
            ca_file=self.ca_file,
        )

    def admin_connection(self) -> LDAPConnection:
        return LDAPConnection.open(self.ldap_settings())

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        realm: str = DEFAULT_REALM,
        netbios: str = DEFAULT_NETBIOS,
        shared: bool = False,
    ) -> SambaDC:
        """Start a DC in ``workdir/samba`` (restored from the cache, or provisioned into it).

        With ``shared=True`` a DC that other live processes already use is joined instead (its
        targetdir is theirs). A DC whose users have all died is a leftover and is stopped first.
        """
        ensure_samba_installed()
        with _locked("dc"):
            registry = _Registry.load()
            if registry is not None and _is_alive(registry.pid, registry.pid_started):
                if registry.live_owners():
                    if shared and (registry.realm, registry.netbios) == (realm, netbios):
                        registry.owners = [*registry.live_owners(), _me()]
                        registry.save()
                        return cls._from_registry(registry)
                    raise SambaError(
                        f"a lab DC (pid {registry.pid}, realm {registry.realm}) is in use by "
                        f"process(es) {', '.join(str(o[0]) for o in registry.live_owners())}; "
                        f"only one DC fits on {HOST}:{LDAPS_PORT}: wait for them or stop it"
                    )
                _terminate(registry.pid, registry.pid_started)
            _Registry.clear()

            target = Path(workdir).resolve() / "samba"
            _stop_leftover_in(target)
            for port in (LDAP_PORT, LDAPS_PORT):
                if _port_open(port):
                    raise SambaError(
                        f"{HOST}:{port} is already in use by a process this lab did not start; "
                        f"stop it (ss -ltnp 'sport = :{port}' names it) or use another network "
                        "namespace"
                    )
            _restore(_provision_archive(realm, netbios), target)
            write_tls_files(target / "private" / "tls", realm)
            process = _launch(target)
            started = _process_started(process.pid)
            if started is None:
                raise SambaError(f"Samba exited right after starting; see {target}/log/samba.out")
            registry = _Registry(process.pid, started, str(target), realm, netbios, [_me()])
            registry.save()
            dc = cls._from_registry(registry)
            dc._process = process
            return dc

    @classmethod
    def _from_registry(cls, registry: _Registry) -> SambaDC:
        target = Path(registry.targetdir)
        return cls(
            targetdir=target,
            realm=registry.realm,
            netbios=registry.netbios,
            admin_password=Secret((target / _ADMIN_PASSWORD_FILE).read_text().strip()),
            pid=registry.pid,
            pid_started=registry.pid_started,
        )

    def stop(self) -> None:
        """Release this DC; stop it when no other live process still uses it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with _locked("dc"):
            registry = _Registry.load()
            if registry is not None and registry.pid == self.pid:
                others = registry.live_owners()
                # one entry per handle: a process may hold several (a lab inside a test run)
                if _me() in others:
                    others.remove(_me())
                if others:
                    registry.owners = others
                    registry.save()
                    return
                _Registry.clear()
            _terminate(self.pid, self.pid_started)
        if self._process is not None:
            self._process.wait()

    def __enter__(self) -> SambaDC:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- seeding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabUser:
    """A user to create. Without a password it is created enabled but cannot bind (fast)."""

    sam: str
    display_name: str | None = None
    password: Secret | None = field(default=None, repr=False)
    disabled: bool = False


def ensure_ou(conn: LDAPConnection, dn: str) -> str:
    """Create the organizational unit ``dn`` unless it exists; return ``dn``."""
    try:
        conn.add(dn, ["top", "organizationalUnit"], {})
    except LDAPOperationError as exc:
        if exc.result != "entryAlreadyExists":
            raise
    return dn


def create_users(
    conn: LDAPConnection, container_dn: str, users: Iterable[LabUser], *, realm: str
) -> list[str]:
    """Create ``users`` in ``container_dn``, one LDAP add each; return their DNs in order.

    Setting a password costs several times more than the add itself, so only users that a test
    binds as should get one.
    """
    created = []
    for user in users:
        dn = f"CN={escape_rdn(user.sam)},{container_dn}"
        flags = UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if user.disabled else 0)
        attributes: dict[str, Any] = {
            "sAMAccountName": user.sam,
            "userPrincipalName": f"{user.sam}@{realm.lower()}",
        }
        if user.display_name:
            attributes["displayName"] = user.display_name
        if user.password is None:
            flags |= UF_PASSWD_NOTREQD
        else:
            # AD takes a password as the UTF-16LE encoding of the quoted string.
            attributes["unicodePwd"] = f'"{user.password.reveal()}"'.encode("utf-16-le")
        attributes["userAccountControl"] = str(flags)
        conn.add(dn, ["top", "person", "organizationalPerson", "user"], attributes)
        created.append(dn)
    return created


def create_group(
    conn: LDAPConnection, container_dn: str, name: str, member_dns: Sequence[str] = ()
) -> str:
    """Create a global security group ``name`` with ``member_dns``; return its DN."""
    dn = f"CN={escape_rdn(name)},{container_dn}"
    attributes: dict[str, Any] = {"sAMAccountName": name}
    if member_dns:
        attributes["member"] = list(member_dns)
    conn.add(dn, ["top", "group"], attributes)
    return dn


# -- helpers -----------------------------------------------------------------------------------


def _redacted(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "password" not in line.lower())


def _tail(output: str, lines: int = 5) -> str:
    kept = [line.strip() for line in output.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"
