"""``provisioner lab up|down|status``: the lab as a background process.

``lab up`` starts ``python -m provisioner.lab.daemon`` in its own session. The daemon runs a
:class:`~provisioner.lab.estate.Lab`, serves a small control API on 127.0.0.1 (status counters,
tamper actions) and writes ``DIR/lab.json`` once it is ready. ``lab down`` sends it SIGTERM; it
stops every listener and removes ``lab.json``, leaving no process behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from provisioner.errors import ProvisionerError
from provisioner.lab.estate import Lab
from provisioner.lab.tamper import tamper

STATE_FILE = "lab.json"


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
    directory: Path, manifests: list[Path], *, servers: int, clients: int, timeout: float = 60
) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    running = read_state(directory)
    if running is not None:
        raise ProvisionerError(
            f"a lab already runs in {directory} (pid {running['pid']}): 'provisioner lab down "
            f"--dir {directory}' first"
        )
    log = (directory / "lab.log").open("w")
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
        *[str(m.resolve()) for m in manifests],
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(directory)
        if state is not None:
            return state
        if process.poll() is not None:
            tail = (directory / "lab.log").read_text().strip().splitlines()[-1:] or ["?"]
            raise ProvisionerError(f"the lab did not start: {tail[0]}")
        time.sleep(0.1)
    process.terminate()
    raise ProvisionerError(f"the lab did not start within {timeout:.0f} s: see {directory}/lab.log")


def down(directory: Path, timeout: float = 15) -> bool:
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
        os.kill(pid, signal.SIGKILL)
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


def serve(directory: Path, manifests: list[Path], servers: int, clients: int) -> None:
    lab = Lab(
        directory, manifests, extra_servers=servers, extra_clients=clients, active_directory=True
    ).start()
    stop = threading.Event()

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
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    state = {
        "pid": os.getpid(),
        "control_port": server.server_address[1],
        "inventory": str(lab.inventory_path.resolve()),
        **lab.status(),
    }
    temporary = directory / f".{STATE_FILE}.tmp"
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(directory / STATE_FILE)
    try:
        stop.wait()
    finally:
        server.shutdown()
        lab.stop()
        (directory / STATE_FILE).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="run a provisioner lab in the foreground")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--servers", type=int, default=0)
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("manifests", nargs="*", type=Path)
    args = parser.parse_args()
    try:
        serve(args.dir, args.manifests, args.servers, args.clients)
    except ProvisionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
