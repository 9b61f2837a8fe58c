"""A real Samba AD domain controller on 127.0.0.1, for the lab, tests and benchmarks.

Samba listens on the fixed LDAP ports (389/636), so one DC serves a whole network namespace.
A registry in the cache dir, one file per network namespace and user (``dc-net4026532281-u0.json``
under an ``flock``), records the running DC and the process that started it, so that a DC left
behind by a crashed run is recognised and stopped, and a DC of another namespace (another lab,
another user's tests) is never taken for ours::

    {"pid": 4242, "pid_started": 901234, "targetdir": "<workdir>/samba", "realm": "NFON.TEST",
     "netbios": "NFON", "owner": [4100, 899000]}

A DC belongs to the process that started it: nothing joins it (a lab that should use a DC that is
already running, as tests do, is handed it). Samba, samba-tool and the import die with the
thread that started them (``PR_SET_PDEATHSIG`` through util-linux ``setpriv``), so a process
killed at any point leaves no DC holding the ports.

A fresh provision takes seconds, so the provisioned targetdir is cached as a ``.tgz`` keyed by the
Samba version and the domain names; starting from the cache takes well under a second::

    dc = SambaDC.start(tmp_path, realm="ACME.TEST", netbios="ACME", progress=print)
    dc.ldaps_url, dc.netbios                # 'ldaps://127.0.0.1:636', 'ACME'
    dc.ca_file                              # <workdir>/samba/private/tls/ca.pem
    dc.import_ldif(users_ldif(f"CN=Users,{dc.domain_dn}", users, realm=dc.realm))  # in bulk
    with dc.admin_connection() as conn:
        create_users(conn, dc.users_dn, [LabUser("jdoe", display_name="Jane Doe")], realm=dc.realm)
    dc.stop()

Samba's Python bindings exist only for the system interpreter, so everything here drives the
``samba-tool`` and ``samba`` programs (and ``samba_import.py`` under Samba's interpreter) as
subprocesses and talks to the DC over LDAP.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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

Progress = Callable[[str], None]

# Bump when the provisioning recipe changes, so stale cached targetdirs are not reused.
_RECIPE_VERSION = 2
# The provisioned smb.conf holds the targetdir's absolute path; the cache stores this instead.
_TARGETDIR_PLACEHOLDER = "@LAB_TARGETDIR@"
_ADMIN_PASSWORD_FILE = "lab-admin-password"
# Without samba-ad-provision, provisioning fails for want of this schema file.
_SCHEMA_FILE = Path("/usr/share/samba/setup/ad-schema/AD_DS_Attributes__Windows_Server_2012_R2.ldf")
START_TIMEOUT = 120.0  # until Samba listens; it takes about a second on an idle machine
_STOP_TIMEOUT = 10.0
_IMPORT_SCRIPT = Path(__file__).with_name("samba_import.py")

_USER_CLASSES = ("top", "person", "organizationalPerson", "user")
_GROUP_CLASSES = ("top", "group")
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


def require_samba() -> None:
    """Raise, naming what to install, unless Samba's AD DC can be provisioned here."""
    missing = samba_missing()
    if missing:
        raise SambaError(
            f"Samba AD DC is not installed ({', '.join(missing)} missing): run scripts/setup.sh, "
            f"or as root: apt-get install --no-install-recommends {' '.join(SAMBA_PACKAGES)}"
        )


def _samba_tool() -> str:
    return _find_program("samba-tool") or "samba-tool"


def _samba_python() -> str:
    """The interpreter that has Samba's Python bindings: the one samba-tool runs on."""
    with contextlib.suppress(OSError), open(_samba_tool(), "rb") as tool:
        first = tool.readline().decode(errors="replace")
        if first.startswith("#!") and "python" in first:
            return first[2:].split()[0]
    return "/usr/bin/python3"


def samba_version() -> str:
    """``4.17.12-Debian`` for ``samba --version`` printing ``Version 4.17.12-Debian``."""
    program = _find_program("samba")
    if program is None:
        raise SambaError("samba is not installed; call require_samba() first")
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


def _namespace() -> str:
    """``net4026532281-u0``: this network namespace and user, which one DC registry serves.

    Two namespaces have their own loopback ports and so their own DCs; a DC recorded by another
    must never be taken for ours (it is not reachable from here).
    """
    return f"net{os.stat('/proc/self/ns/net').st_ino}-u{os.getuid()}"


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
    owner: list[int]  # [pid, start time] of the process that started the DC

    @staticmethod
    def path() -> Path:
        return cache_dir() / f"dc-{_namespace()}.json"

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


def _me() -> list[int]:
    started = _process_started(os.getpid())
    assert started is not None  # we are running
    return [os.getpid(), started]


def _dies_with_parent(command: list[str]) -> list[str]:
    """``command``, made to be killed when the thread that starts it ends (util-linux setpriv
    sets PR_SET_PDEATHSIG, which survives the exec): a lab killed at any point leaves no
    Samba or samba-tool behind. Without setpriv the normal stop paths still apply."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


# -- provisioning ------------------------------------------------------------------------------


def _samba_env() -> dict[str, str]:
    # samba-tool runs on the system Python; our venv's variables must not leak into it.
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {key: value for key, value in os.environ.items() if key not in drop}


def _archive_path(realm: str, netbios: str) -> Path:
    version = samba_version().replace("/", "_")
    return cache_dir() / f"dc-{version}-{realm}-{netbios}-r{_RECIPE_VERSION}.tgz"


def _provision_archive(realm: str, netbios: str, progress: Progress) -> Path:
    """The cached provisioned targetdir, provisioning it first when there is none."""
    archive = _archive_path(realm, netbios)
    with _locked(f"provision-{realm}-{netbios}"):
        if archive.is_file():
            return archive
        progress(f"provisioning domain {netbios} ({realm}) with samba-tool, once per domain")
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
        # a lab DC is thrown away when it stops: no fsync on every change
        "ldb:nosync": "true",
    }
    command = [
        _samba_tool(), "domain", "provision", f"--targetdir={target}", f"--realm={realm}",
        f"--domain={netbios}", "--server-role=dc", "--dns-backend=NONE", "--host-name=dc1",
        f"--host-ip={HOST}", *(f"--option={key}={value}" for key, value in options.items()),
    ]  # fmt: skip
    # No --adminpass: a command line is visible to every user. Samba then generates one and
    # logs it, and we read it from the output, which goes nowhere else.
    done = subprocess.run(
        _dies_with_parent(command), env=_samba_env(), capture_output=True, text=True, check=False
    )
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
    done = subprocess.run(
        _dies_with_parent(settings), env=_samba_env(), capture_output=True, text=True, check=False
    )
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


def _launch(target: Path, timeout: float) -> subprocess.Popen[bytes]:
    """Start Samba from ``target`` and wait until it listens; on any failure stop it again."""
    samba = _find_program("samba") or "samba"
    log = open(target / "log" / "samba.out", "ab")  # noqa: SIM115 (handed to the child)
    with log:
        process = subprocess.Popen(
            _dies_with_parent([samba, "-i", "-M", "single", "-s", str(target / "etc/smb.conf")]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=target,
            env=_samba_env(),
            start_new_session=True,  # our own process group, so stop() reaches every child
        )
    try:
        deadline = time.monotonic() + timeout
        while not _port_open(LDAPS_PORT):
            if process.poll() is not None or time.monotonic() > deadline:
                output = (target / "log" / "samba.out").read_text(errors="replace")
                waited = "" if process.poll() is not None else f" within {timeout:.0f} s"
                raise SambaError(
                    f"Samba did not start listening on {HOST}:{LDAPS_PORT}{waited}: {_tail(output)}"
                )
            time.sleep(0.05)
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process


@dataclass
class SambaDC:
    """A running lab DC, started by this process; ``stop()`` it (or use ``with``)."""

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
        progress: Progress = lambda _: None,
        timeout: float = START_TIMEOUT,
    ) -> SambaDC:
        """Start a DC in ``workdir/samba`` (restored from the cache, or provisioned into it).

        One DC fits in a network namespace: a DC that another live process of this namespace
        started is an error naming it; one whose starter died is a leftover and is stopped.
        ``timeout`` bounds the wait until Samba listens.
        """
        require_samba()
        with _locked(f"dc-{_namespace()}"):
            registry = _Registry.load()
            if registry is not None and _is_alive(registry.pid, registry.pid_started):
                if _is_alive(*registry.owner):
                    raise SambaError(
                        f"a lab DC for {registry.netbios} (pid {registry.pid}, in "
                        f"{registry.targetdir}) already runs in this network namespace, started "
                        f"by process {registry.owner[0]}; one DC fits on {HOST}:{LDAPS_PORT}: "
                        "stop that lab, or run this one in another network namespace"
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
            archive = _provision_archive(realm, netbios, progress)
            progress(f"starting Samba AD DC for {netbios} ({realm}) on {HOST}:{LDAPS_PORT}")
            _restore(archive, target)
            write_tls_files(target / "private" / "tls", realm)
            process = _launch(target, timeout)
            started = _process_started(process.pid)
            if started is None:
                process.wait()
                raise SambaError(f"Samba exited right after starting; see {target}/log/samba.out")
            registry = _Registry(process.pid, started, str(target), realm, netbios, _me())
            registry.save()
        return cls(
            targetdir=target,
            realm=realm,
            netbios=netbios,
            admin_password=Secret((target / _ADMIN_PASSWORD_FILE).read_text().strip()),
            pid=process.pid,
            pid_started=started,
            _process=process,
        )

    def import_ldif(self, ldif: str, progress: Progress = lambda _: None) -> str:
        """Add the entries of ``ldif`` in a few large transactions (existing ones are skipped).

        Runs ``samba_import.py`` under Samba's interpreter against the DC's database; the LDIF
        goes over stdin, so the passwords in it appear on no command line. ``progress`` hears
        ``added N, skipped M of T`` after each transaction; the last of these is returned.
        """
        # -I: not the script's directory first on sys.path, where our samba.py would shadow Samba's
        conf = str(self.targetdir / "etc" / "smb.conf")
        command = [_samba_python(), "-I", str(_IMPORT_SCRIPT), conf]
        with tempfile.TemporaryFile("w+") as errors:
            process = subprocess.Popen(
                _dies_with_parent(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=_samba_env(),
                text=True,
            )
            assert process.stdin is not None and process.stdout is not None
            with process:
                try:
                    process.stdin.write(ldif)
                    process.stdin.close()
                    said = ""
                    for line in process.stdout:
                        said = line.strip()
                        progress(said)
                except BaseException:
                    process.kill()  # interrupted: do not wait for the rest of the import
                    raise
            errors.seek(0)
            if process.returncode != 0:
                raise SambaError(f"importing into the lab DC failed: {_tail(errors.read())}")
        return said

    def stop(self) -> None:
        """Stop the DC and wait until it is gone. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with _locked(f"dc-{_namespace()}"):
            registry = _Registry.load()
            if registry is not None and registry.pid == self.pid:
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


def _user_attributes(user: LabUser, realm: str) -> dict[str, str | bytes]:
    flags = UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if user.disabled else 0)
    attributes: dict[str, str | bytes] = {
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
    return attributes


def user_dn(container_dn: str, user: LabUser) -> str:
    return f"CN={escape_rdn(user.sam)},{container_dn}"


def create_users(
    conn: LDAPConnection, container_dn: str, users: Iterable[LabUser], *, realm: str
) -> list[str]:
    """Create ``users`` in ``container_dn``, one LDAP add each; return their DNs in order.

    Fine for a few; many go faster through :meth:`SambaDC.import_ldif` (:func:`users_ldif`).
    Setting a password costs several times more than the add itself, so only users that a test
    binds as should get one.
    """
    created = []
    for user in users:
        dn = user_dn(container_dn, user)
        conn.add(dn, _USER_CLASSES, _user_attributes(user, realm))
        created.append(dn)
    return created


def create_group(
    conn: LDAPConnection, container_dn: str, name: str, member_dns: Sequence[str] = ()
) -> str:
    """Create a global security group ``name`` with ``member_dns``; return its DN."""
    dn = f"CN={escape_rdn(name)},{container_dn}"
    conn.add(dn, _GROUP_CLASSES, _group_attributes(name, member_dns))
    return dn


def _group_attributes(name: str, member_dns: Sequence[str]) -> dict[str, str | list[str]]:
    attributes: dict[str, str | list[str]] = {"sAMAccountName": name}
    if member_dns:
        attributes["member"] = list(member_dns)
    return attributes


# -- seeding in bulk: LDIF (RFC 2849) for SambaDC.import_ldif ----------------------------------

# A value that may be written as it is; anything else (non-ASCII, a leading space, colon or
# "<", a trailing space, a line break) is written base64-encoded ("name:: ...").
_LDIF_SAFE = re.compile(
    r"[\x01-\x09\x0b\x0c\x0e-\x1f!-9;=-\x7f]"  # SAFE-INIT-CHAR: not space, ":" or "<"
    r"[\x01-\x09\x0b\x0c\x0e-\x7f]*"  # SAFE-CHAR: ASCII without NUL, LF, CR
    r"(?<! )"  # "values that end with SPACE SHOULD be base-64 encoded"
)


def ldif_entry(
    dn: str, object_classes: Sequence[str], attributes: Mapping[str, str | bytes | Sequence[str]]
) -> str:
    """One entry to add, as LDIF text (ending in a blank line)."""
    lines = [_ldif_line("dn", dn), *(_ldif_line("objectClass", c) for c in object_classes)]
    for name, value in attributes.items():
        values = [value] if isinstance(value, str | bytes) else list(value)
        lines += [_ldif_line(name, one) for one in values]
    return "".join(lines) + "\n"


def ldif_add_member(group_dn: str, member_dn: str) -> str:
    """A change that adds ``member_dn`` to the group ``group_dn``."""
    return (
        _ldif_line("dn", group_dn)
        + "changetype: modify\nadd: member\n"
        + _ldif_line("member", member_dn)
        + "-\n\n"
    )


def _ldif_line(name: str, value: str | bytes) -> str:
    if isinstance(value, str) and _LDIF_SAFE.fullmatch(value):
        return f"{name}: {value}\n"
    data = value.encode("utf-8") if isinstance(value, str) else value
    return f"{name}:: {base64.b64encode(data).decode('ascii')}\n"


def ou_ldif(dn: str) -> str:
    return ldif_entry(dn, ["top", "organizationalUnit"], {})


def users_ldif(container_dn: str, users: Iterable[LabUser], *, realm: str) -> str:
    """Entries for ``users`` in ``container_dn``, as :func:`create_users` would make them."""
    return "".join(
        ldif_entry(user_dn(container_dn, user), _USER_CLASSES, _user_attributes(user, realm))
        for user in users
    )


def group_ldif(container_dn: str, name: str, member_dns: Sequence[str] = ()) -> str:
    dn = f"CN={escape_rdn(name)},{container_dn}"
    return ldif_entry(dn, _GROUP_CLASSES, _group_attributes(name, member_dns))


# -- helpers -----------------------------------------------------------------------------------


def _redacted(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "password" not in line.lower())


def _tail(output: str, lines: int = 5) -> str:
    kept = [line.strip() for line in output.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "no output"
