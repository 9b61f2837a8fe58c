"""``provisioner lab up|down|status``: the lab as a background process.

``lab up`` starts ``python -m provisioner.lab.daemon`` in its own session and prints the
daemon's progress (the ``lab:`` lines of ``DIR/lab.log``) until the lab is ready, which the
daemon marks by writing ``DIR/lab.json``. Until then the daemon lives only as long as ``lab up``
(PR_SET_PDEATHSIG): a ``lab up`` that is interrupted, killed or runs out of ``--timeout`` takes
the daemon with it, and the daemon stops whatever it had started (Samba included) on its way
out. Once ready, the daemon is on its own. ``lab down`` sends it SIGTERM; it stops every
listener and Samba and removes ``lab.json``, leaving no process behind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn

import httpx

from provisioner.errors import ProvisionerError
from provisioner.lab.estate import Lab
from provisioner.lab.tamper import tamper

STATE_FILE = "lab.json"
LOG_FILE = "lab.log"
PROGRESS = "lab: "  # the daemon's progress lines in its log start with this
_STOP_GRACE = 30.0  # seconds a daemon gets to stop what it started before it is killed
_PR_SET_PDEATHSIG = 1  # prctl(2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    if not _alive(int(state["pid"])):
        path.unlink(missing_ok=True)  # left by a lab that was killed
        return None
    return state


def up(
    directory: Path,
    manifests: list[Path],
    *,
    servers: int,
    clients: int,
    timeout: float | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Start the daemon and wait until its lab is ready (at most ``timeout`` seconds, when
    given), passing its progress on. On any failure nothing it started is left running."""
    directory.mkdir(parents=True, exist_ok=True)
    running = read_state(directory)
    if running is not None:
        raise ProvisionerError(
            f"a lab already runs in {directory} (pid {running['pid']}): 'provisioner lab down "
            f"--dir {directory}' first"
        )
    command = [
        sys.executable,
        "-m",
        "provisioner.lab.daemon",
        "--dir",
        str(directory),
        "--servers",
        str(servers),
        "--clients",
        str(clients),
        "--parent",
        str(os.getpid()),
        *[str(m.resolve()) for m in manifests],
    ]
    with (directory / LOG_FILE).open("w") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        return _wait_until_ready(directory, process, timeout, progress)
    except BaseException:
        _stop(process)
        raise


def _wait_until_ready(
    directory: Path,
    process: subprocess.Popen[bytes],
    timeout: float | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    with (directory / LOG_FILE).open(encoding="utf-8", errors="replace") as log:
        pending = ""
        while True:
            pending += log.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.startswith(PROGRESS):
                    progress(line.removeprefix(PROGRESS))
            state = read_state(directory)
            if state is not None:
                return state
            if process.poll() is not None:
                raise ProvisionerError(
                    f"the lab did not start: {_last_error(directory)} (see {directory / LOG_FILE})"
                )
            if deadline is not None and time.monotonic() > deadline:
                raise ProvisionerError(
                    f"the lab was not ready within {timeout:g} s (--timeout); what it had "
                    f"started is stopped again; see {directory / LOG_FILE}"
                )
            time.sleep(0.1)


def _last_error(directory: Path) -> str:
    """What the daemon said last: its error line, else its last line."""
    said = (directory / LOG_FILE).read_text(errors="replace").splitlines()
    lines = [line for line in said if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or ["it exited"])[-1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, so the daemon stops what it started; SIGKILL to its group if it takes too long
    (Samba then dies with it: it is started to)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def down(directory: Path, timeout: float = _STOP_GRACE) -> bool:
    state = read_state(directory)
    if state is None:
        return False
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
        _reap(pid)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
        os.waitpid(pid, os.WNOHANG)


def control(directory: Path, method: str, path: str, body: dict[str, str] | None = None) -> Any:
    state = read_state(directory)
    if state is None:
        raise ProvisionerError(f"no lab runs in {directory}: start one with 'provisioner lab up'")
    url = f"http://127.0.0.1:{state['control_port']}{path}"
    response = httpx.request(method, url, json=body, timeout=10)
    data = response.json()
    if response.status_code != 200:
        raise ProvisionerError(data.get("error", f"lab control answered {response.status_code}"))
    return data


class _Stopped(BaseException):
    """SIGTERM or SIGINT: stop the lab (raised in the main thread, wherever it is)."""


def _on_stop_signal(*_: object) -> NoReturn:
    # once: a second signal must not cut short the stopping of what was started
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Stopped


def _parent_death_signal(sig: int) -> None:
    """Have the kernel send ``sig`` when our parent dies (0: no longer)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def serve(
    directory: Path, manifests: list[Path], servers: int, clients: int, parent: int | None
) -> None:
    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    if parent is not None:
        _parent_death_signal(signal.SIGTERM)  # until ready, live only as long as `lab up`
        if os.getppid() != parent:
            return  # it died before we could ask: nothing was started
    lab = Lab(
        directory,
        manifests,
        extra_servers=servers,
        extra_clients=clients,
        active_directory=True,
        progress=lambda message: print(f"{PROGRESS}{message}", flush=True),
    )
    server: ThreadingHTTPServer | None = None
    try:
        lab.start()
        server = _control_server(lab)
        if parent is not None:
            _parent_death_signal(0)  # ready: from here the lab outlives `lab up`
        state = {
            "pid": os.getpid(),
            "control_port": server.server_address[1],
            "inventory": str(lab.inventory_path.resolve()),
            "estate_inventories": {
                name: str(path.resolve()) for name, path in lab.estate_inventories.items()
            },
            **lab.status(),
        }
        temporary = directory / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(directory / STATE_FILE)
        threading.Event().wait()  # until a signal raises _Stopped
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if server is not None:
            server.shutdown()
        lab.stop()
        (directory / STATE_FILE).unlink(missing_ok=True)


def _control_server(lab: Lab) -> ThreadingHTTPServer:
    """The lab's control API on 127.0.0.1 (``GET /status``, ``POST /tamper``), serving."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, data: Any) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/status":
                self._answer(200, lab.status())
            else:
                self._answer(404, {"error": "unknown path"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/tamper":
                self._answer(404, {"error": "unknown path"})
                return
            try:
                message = tamper(lab, request["host"], request["action"], request["argument"])
            except ProvisionerError as exc:
                self._answer(400, {"error": str(exc)})
            else:
                self._answer(200, {"message": message})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="run a provisioner lab in the foreground")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--servers", type=int, default=0)
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--parent", type=int, help="live only as long as this process, until ready")
    parser.add_argument("manifests", nargs="*", type=Path)
    args = parser.parse_args()
    try:
        serve(args.dir, args.manifests, args.servers, args.clients, args.parent)
    except ProvisionerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
