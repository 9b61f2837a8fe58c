"""``provisioner rollout``: tenants in waves over many servers, halted, resumed, reported.

    rollout PATH... [--waves 1,10%,50%,100%] [--max-failures N|P%] [--pause S | --confirm-each-wave]
            [--target SEL]... [--auto-approve]
    rollout --resume ID [PATH...]          # continue a halted or interrupted rollout, or join one
    rollout status [ID] [--format text|markdown|html] [--output FILE]

Wave 0 converges the servers' own resources (package, Telephony, CTI engine, firewall,
location) and the workstations'; then the tenants go in waves, canary first. The rollout, its
waves and each host's work live in the state store, so any number of workers can drive it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from provisioner.commands import EXIT_ERROR, EXIT_OK, Options, confirm, load, load_inventory_for
from provisioner.converge import count
from provisioner.errors import Interrupted, ProvisionerError
from provisioner.inventory import Inventory
from provisioner.manifest.validate import Estate
from provisioner.planner import Host, hosts
from provisioner.rollout.progress import watching
from provisioner.rollout.report import RENDERERS, Report, render_text
from provisioner.rollout.waves import assign, parse_threshold, parse_waves
from provisioner.rollout.worker import Worker
from provisioner.runner import default_owner
from provisioner.state.rollouts import Rollouts, Settings
from provisioner.state.store import StateStore


@dataclass(frozen=True)
class Scope:
    """The tenants and hosts a rollout works."""

    tenants: list[str]
    hosts: list[Host]  # wave 0


def scope(estate: Estate, selectors: Sequence[str]) -> Scope:
    """Everything, or what ``tenant=``, ``server=`` and ``host=`` selectors name (a tenant
    brings its server); a selector that matches nothing is an error."""
    every = hosts(estate)
    if not selectors:
        return Scope(sorted(estate.tenants), every)
    tenants: set[str] = set()
    names: set[str] = set()
    for selector in selectors:
        kind, _, name = selector.partition("=")
        if kind == "tenant" and name in estate.tenants:
            tenants.add(name)
            names.add(estate.tenants[name].server)
        elif kind == "server" and name in estate.servers:
            names.add(name)
            tenants |= {t.name for t in estate.tenants.values() if t.server == name}
        elif kind == "host" and any(h.name == name for h in every):
            names.add(name)
        elif kind in ("tenant", "server", "host"):
            raise ProvisionerError(f"--target '{selector}' matches nothing in the manifests")
        else:
            raise ProvisionerError(
                f"--target '{selector}': a rollout works whole tenants and hosts: use "
                "tenant=NAME, server=NAME or host=NAME"
            )
    return Scope(sorted(tenants), [h for h in every if h.name in names])


def rollout_command(
    paths: Sequence[Path],
    options: Options,
    *,
    settings: Settings,
    targets: Sequence[str],
    auto_approve: bool,
) -> int:
    """Start a rollout: every offline check, the waves shown, a yes, then the workers."""
    steps = parse_waves(settings.waves)
    parse_threshold(settings.max_failures)
    estate = load(paths)
    inventory = load_inventory_for(estate, options)
    chosen = scope(estate, targets)
    pinned = {t: w for t in chosen.tenants if (w := estate.tenants[t].wave) is not None}
    waves = assign(chosen.tenants, steps, pinned)
    with StateStore.open(options.state, connections=options.parallelism) as store:
        options.echo(layout(waves, chosen, estate, settings))
        if not auto_approve:
            confirm(f"Roll out to {len(chosen.tenants)} tenants in {len(waves)} waves?", "rollout")
        owner = default_owner()
        run_id = store.begin_run("rollout", manifests=paths, targets=targets, owner=owner)
        servers = {t: estate.tenants[t].server for t in chosen.tenants}
        Rollouts(store).create(
            run_id,
            settings,
            waves=[[(t, servers[t]) for t in wave] for wave in waves],
            first=[h.key for h in chosen.hosts],
        )
        options.echo(f"Rollout {run_id} recorded in {store.where}.")
        return drive(store, run_id, estate, inventory, options, owner, settings)


def resume_command(
    run_id: int, paths: Sequence[Path], options: Options, *, auto_approve: bool
) -> int:
    """Continue a halted or interrupted rollout from its current wave, re-planning from fresh
    facts; or join a running one as another worker."""
    with StateStore.open(options.state, connections=options.parallelism) as store:
        rollouts = Rollouts(store)
        state = rollouts.load(run_id)
        estate = load(list(paths) or [Path(p) for p in state.manifests])
        inventory = load_inventory_for(estate, options)
        if state.status != "running":
            options.echo(render_text(Report.of(state), verbose=options.verbose).rstrip("\n"))
            if not auto_approve:
                confirm(f"Resume rollout {run_id} at wave {state.current_wave}?", "rollout")
            state = rollouts.resume(run_id)
        else:
            options.echo(f"Rollout {run_id} is running: joining it as another worker.")
        owner = default_owner()
        return drive(store, run_id, estate, inventory, options, owner, state.settings)


def drive(
    store: StateStore,
    run_id: int,
    estate: Estate,
    inventory: Inventory,
    options: Options,
    owner: str,
    settings: Settings,
) -> int:
    ask = ask_each_wave if settings.confirm_each_wave and sys.stdin.isatty() else None
    worker = Worker(
        store,
        run_id,
        estate,
        inventory,
        owner=owner,
        parallelism=options.parallelism,
        ask=ask,
        wait_s=options.wait,
    )
    terminal = sys.stdout.isatty()
    try:
        with watching(store, run_id, terminal=terminal, colour=options.colour, echo=options.echo):
            status = worker.drive()
    except KeyboardInterrupt:
        raise Interrupted(
            f"rollout {run_id}: the batches already sent finished and are recorded, the hosts' "
            f"locks given back; resume with: provisioner rollout --resume {run_id}"
        ) from None
    report = Report.of(Rollouts(store).load(run_id))
    options.echo(render_text(report, verbose=options.verbose).rstrip("\n"))
    store.ensure_recorded()
    if status != "complete":
        return EXIT_ERROR
    return EXIT_ERROR if report.failures else EXIT_OK


def status_command(
    run_id: int | None, options: Options, *, output_format: str, output: Path | None
) -> int:
    """Any rollout, running or finished (the latest without an ID)."""
    with StateStore.open(options.state) as store:
        rollouts = Rollouts(store)
        chosen = run_id if run_id is not None else rollouts.latest()
        if chosen is None:
            raise ProvisionerError(f"there is no rollout in the state store {store.where}")
        report = Report.of(rollouts.load(chosen))
    if output_format == "text":
        document = render_text(report, verbose=options.verbose)
    else:
        document = RENDERERS[output_format](report)
    if output is None:
        options.echo(document.rstrip("\n"))
        return EXIT_OK
    try:
        output.write_text(document, encoding="utf-8")
    except OSError as exc:
        raise ProvisionerError(f"{output}: cannot write the report: {exc.strerror}") from None
    options.echo(f"{report.summary()} Report written to {output}.")
    return EXIT_OK


def layout(waves: list[list[str]], chosen: Scope, estate: Estate, settings: Settings) -> str:
    """The plan of the rollout: what each wave takes."""
    lines = [
        f"Rollout of {count(len(chosen.tenants), 'tenant')} on "
        f"{count(len(chosen.hosts), 'host')}, waves {settings.waves}, max failures "
        f"{settings.max_failures} per wave:",
        f"  wave 0: the own resources of {', '.join(h.name for h in chosen.hosts) or 'no host'}",
    ]
    for number, wave in enumerate(waves, start=1):
        servers = sorted({estate.tenants[t].server for t in wave})
        names = ", ".join(wave[:5]) + (f", ... ({len(wave)} tenants)" if len(wave) > 5 else "")
        on = ", ".join(servers) if len(servers) <= 3 else count(len(servers), "server")
        label = " (canary)" if number == 1 else ""
        lines.append(f"  wave {number}{label}: {names} on {on}")
    if settings.pause_s:
        lines.append(f"  a pause of {settings.pause_s:g} s between waves")
    if settings.confirm_each_wave:
        lines.append("  each wave waits for a yes")
    return "\n".join(lines)


def ask_each_wave(wave: int) -> bool:
    answer = click.prompt(
        f"Wave {wave} is ready. Go ahead? Only 'yes' is accepted, anything else halts",
        default="",
        show_default=False,
    )
    return answer.strip() == "yes"
