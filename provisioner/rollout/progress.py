"""A rollout's progress as it happens, read from the state store, so that it shows the work of
every worker, not only this process's.

On a terminal a live table (``rich``): per wave its state, hosts and tenants done, failing,
working and waiting. Elsewhere plain lines, one per wave change and per host finished, that a
log keeps. ``NO_COLOR`` (https://no-color.org) and ``--no-color`` turn colour off::

    with watching(store, run_id, terminal=sys.stdout.isatty(), colour=True, echo=click.echo):
        worker.drive()
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from rich.console import Console
from rich.live import Live
from rich.table import Table

from provisioner.errors import ProvisionerError
from provisioner.state.rollouts import Rollouts, RolloutState, UnitRow, WaveRow
from provisioner.state.store import StateStore

REFRESH_S = 0.5


@contextmanager
def watching(
    store: StateStore,
    run_id: int,
    *,
    terminal: bool,
    colour: bool,
    echo: Callable[[str], None],
) -> Iterator[None]:
    """Show the rollout's progress while the body runs."""
    rollouts = Rollouts(store)
    stop = threading.Event()
    if terminal:
        console = Console(no_color=not colour, highlight=False)
        live = Live(console=console, refresh_per_second=4, transient=False)
        show: Callable[[RolloutState], None] = lambda state: live.update(table(state))  # noqa: E731
        live.start()
    else:
        lines = Lines(echo)
        show = lines.show
    thread = threading.Thread(target=_poll, args=(rollouts, run_id, show, stop), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with suppress(ProvisionerError):  # the store is away: the command says so
            show(rollouts.load(run_id))  # the last word
        if terminal:
            live.stop()


def _poll(
    rollouts: Rollouts, run_id: int, show: Callable[[RolloutState], None], stop: threading.Event
) -> None:
    while not stop.wait(REFRESH_S):
        try:
            show(rollouts.load(run_id))
        except ProvisionerError:
            return


def table(state: RolloutState) -> Table:
    """Per wave: its state, and hosts and tenants by how far they got."""
    grid = Table(title=f"Rollout {state.run_id}: {state.status}", title_justify="left")
    for column in ("wave", "state", "hosts done", "failing", "working", "waiting", "tenants"):
        grid.add_column(column, justify="right" if column != "state" else "left")
    for wave in state.waves:
        hosts = Counter(u.status for u in wave.units)
        tenants = Counter(t.status for t in wave.tenants)
        style = {"done": "green", "halted": "red", "halting": "red"}.get(wave.status, "")
        grid.add_row(
            str(wave.number),
            f"[{style}]{wave.status}[/]" if style else wave.status,
            str(hosts["done"]),
            str(hosts["failed"]),
            str(hosts["claimed"]),
            str(hosts["waiting"]),
            "-" if wave.number == 0 else
            f"{tenants['done']} done, {tenants['failed']} failed, {tenants['waiting']} waiting",
        )  # fmt: skip
    return grid


class Lines:
    """Plain lines: a wave that changes state, a host that finishes its part of a wave."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.waves: dict[int, str] = {}
        self.units: set[tuple[int, str]] = set()

    def show(self, state: RolloutState) -> None:
        for wave in state.waves:
            for unit in wave.units:
                key = (wave.number, unit.host)
                if unit.status in ("done", "failed") and key not in self.units:
                    self.units.add(key)
                    self.echo(_unit_line(wave, unit))
            if self.waves.get(wave.number, "waiting") != wave.status:
                self.waves[wave.number] = wave.status
                self.echo(_wave_line(wave))


def _wave_line(wave: WaveRow) -> str:
    n = len(wave.tenants)
    what = "the hosts' own resources" if wave.number == 0 else f"{n} tenant{'s' * (n != 1)}"
    detail = f": {wave.message}" if wave.message else ""
    return f"wave {wave.number} ({what}): {wave.status}{detail}"


def _unit_line(wave: WaveRow, unit: UnitRow) -> str:
    name = unit.host.split("/", 1)[-1]
    mine = [t for t in wave.tenants if t.server == name]
    done = sum(t.status == "done" for t in mine)
    if unit.status == "failed":
        return f"  wave {wave.number} {name}: failed: {unit.message}"
    tenants = f": {done} of {len(mine)} tenants done" if mine else ""
    return f"  wave {wave.number} {name}: done{tenants}"
