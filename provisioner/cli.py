"""The command line: validate, plan, apply, rollout, drift, render, facts, doctor, conformance,
schema, export and lab.

Exit codes everywhere: 0 success and nothing to change, 1 error, 2 success with changes or drift.
A :class:`~provisioner.errors.ProvisionerError` prints as one line and exits 1; so does a usage
error (click's own code for those is 2, which here means "changes").
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner import __version__
from provisioner.errors import Interrupted, ProvisionerError

if TYPE_CHECKING:  # commands imports every transport: validate needs none of them
    from provisioner.commands import Options

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))


def _use_cache(_: click.Context, __: click.Parameter, no_cache: bool) -> None:
    from provisioner.manifest import cache

    cache.enabled(not no_cache)


cache_option = click.option(
    "--no-cache",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_use_cache,
    help="parse every manifest again (default: unchanged files come from .provisioner/cache)",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provisioner")
def app() -> None:
    """Declarative provisioning of NFON Multiline TAPI estates on Windows."""


@app.command()
@cache_option
@paths_argument
def validate(paths: tuple[Path, ...]) -> None:
    """Check manifests offline: schema, references, policies. Reports every problem."""
    from provisioner.manifest import load_estate

    estate, errors = load_estate(paths)
    for error in errors:
        click.echo(str(error))
    if errors:
        files = {e.location.file for e in errors if e.location}
        where = f" in {_count(len(files), 'file')}" if files else ""
        click.echo(f"{_count(len(errors), 'problem')}{where}", err=True)
        sys.exit(EXIT_ERROR)
    kinds = Counter(kind for kind, _ in estate.origin)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    assignments = sum(len(t.assignments) for t in estate.tenants.values())
    click.echo(
        f"valid: {_count(len(estate.files), 'file')}, {_count(len(estate.origin), 'document')} "
        f"({summary}), {_count(assignments, 'line assignment')}"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of a manifest document (for editors' YAML plugins)."""
    from provisioner.manifest.schema import manifest_schema

    click.echo(json.dumps(manifest_schema(), indent=2))


inventory_option = click.option(
    "--inventory",
    envvar="PROVISIONER_INVENTORY",
    type=click.Path(dir_okay=False),
    help="overlay mapping manifest names to endpoints (or $PROVISIONER_INVENTORY)",
)
parallelism_option = click.option(
    "--parallelism",
    type=click.IntRange(1, 100),
    default=10,
    show_default=True,
    help="hosts worked at once",
)
colour_option = click.option("--no-color", "no_colour", is_flag=True, help="plain text output")
target_option = click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="SEL",
    help="only changes matching: an address pattern, server=NAME, tenant=NAME or host=NAME "
    "(repeatable)",
)

state_option = click.option(
    "--state",
    metavar="URL",
    help="the state store: postgresql://USER@HOST/DB for a team, sqlite:///PATH "
    "(default: $PROVISIONER_STATE, else .provisioner/state.db)",
)
verbose_option = click.option(
    "--verbose",
    is_flag=True,
    help="list what is otherwise summed up: every change of a large plan, every tenant of a note",
)
auto_approve_option = click.option("--auto-approve", is_flag=True, help="do not ask to confirm")
wait_option = click.option(
    "--wait",
    type=click.FloatRange(0),
    default=0.0,
    metavar="S",
    help="queue up to S seconds behind another apply or rollout holding a host (default: fail)",
)


def _options(
    inventory: str | None,
    parallelism: int = 10,
    no_colour: bool = True,
    *,
    state: str | None = None,
    verbose: bool = False,
    wait: float = 0.0,
) -> Options:
    from provisioner.commands import Options

    return Options(
        inventory=inventory,
        parallelism=parallelism,
        colour=not no_colour and sys.stdout.isatty() and "NO_COLOR" not in os.environ,
        state=state,
        verbose=verbose,
        wait=wait,
    )


@app.command()
@cache_option
@paths_argument
@inventory_option
@parallelism_option
@colour_option
@target_option
@state_option
@verbose_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="save the plan")
@click.option(
    "--format", "output_format", type=click.Choice(["text", "json", "markdown"]), default="text"
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the plan (in --format) to a file, such as a pull-request comment",
)
@click.option("--detailed-exitcode", is_flag=True, help="exit 2 when there are changes")
def plan(
    paths: tuple[Path, ...],
    inventory: str | None,
    parallelism: int,
    no_colour: bool,
    targets: tuple[str, ...],
    state: str | None,
    verbose: bool,
    out: Path | None,
    output_format: str,
    output: Path | None,
    detailed_exitcode: bool,
) -> None:
    """Show what apply would change."""
    from provisioner.commands import plan_command

    sys.exit(
        plan_command(
            paths,
            _options(inventory, parallelism, no_colour, state=state, verbose=verbose),
            targets=targets,
            out=out,
            output_format=output_format,
            detailed_exitcode=detailed_exitcode,
            output=output,
        )
    )


@app.command()
@cache_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@inventory_option
@parallelism_option
@colour_option
@target_option
@state_option
@verbose_option
@wait_option
@click.option(
    "--plan", "saved", type=click.Path(dir_okay=False, path_type=Path), help="a saved plan"
)
@auto_approve_option
def apply(
    paths: tuple[Path, ...],
    inventory: str | None,
    parallelism: int,
    no_colour: bool,
    targets: tuple[str, ...],
    state: str | None,
    verbose: bool,
    wait: float,
    saved: Path | None,
    auto_approve: bool,
) -> None:
    """Apply the manifests (or a saved plan, from where it was made or with PATHS), then verify."""
    from provisioner.commands import apply_command

    sys.exit(
        apply_command(
            list(paths),
            _options(inventory, parallelism, no_colour, state=state, verbose=verbose, wait=wait),
            targets=targets,
            saved_path=saved,
            auto_approve=auto_approve,
        )
    )


@app.command()
@cache_option
@paths_argument
@inventory_option
@parallelism_option
@target_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "markdown", "html"]),
    default="text",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="write to a file")
def drift(
    paths: tuple[Path, ...],
    inventory: str | None,
    parallelism: int,
    targets: tuple[str, ...],
    output_format: str,
    output: Path | None,
) -> None:
    """Report what differs between the manifests and the live estate (exit 2 on drift)."""
    from provisioner.commands import drift_command

    sys.exit(
        drift_command(
            paths,
            _options(inventory, parallelism),
            output_format=output_format,
            output=output,
            targets=targets,
        )
    )


class _RolloutGroup(click.Group):
    """``rollout status [ID]`` is a subcommand; anything else starts (or resumes) a rollout."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@app.group(cls=_RolloutGroup)
def rollout() -> None:
    """Tenants in waves over many servers: provisioner rollout PATH... | --resume ID | status."""


@rollout.command("start")
@cache_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@inventory_option
@parallelism_option
@colour_option
@target_option
@state_option
@verbose_option
@click.option(
    "--waves",
    default="1,10%,50%,100%",
    show_default=True,
    help="tenants per wave, cumulative: numbers or percentages; the first is the canary",
)
@click.option(
    "--max-failures",
    default="0",
    show_default=True,
    metavar="N|P%",
    help="failed tenants a wave may have before the rollout halts",
)
@click.option("--pause", type=click.FloatRange(0), default=0.0, metavar="S", help="between waves")
@click.option("--confirm-each-wave", is_flag=True, help="ask before each wave")
@click.option("--lease", type=click.FloatRange(1), default=60.0, metavar="S", hidden=True)
@click.option("--resume", "resume_id", type=int, metavar="ID", help="continue or join a rollout")
@wait_option
@auto_approve_option
def rollout_start(
    paths: tuple[Path, ...],
    inventory: str | None,
    parallelism: int,
    no_colour: bool,
    targets: tuple[str, ...],
    state: str | None,
    verbose: bool,
    waves: str,
    max_failures: str,
    pause: float,
    confirm_each_wave: bool,
    lease: float,
    resume_id: int | None,
    wait: float,
    auto_approve: bool,
) -> None:
    """Roll the manifests out in waves: wave 0 the servers' own resources, then the tenants,
    canary first; halt when a wave fails too much. With --resume ID, continue a halted or
    interrupted rollout from fresh facts, or join a running one as another worker."""
    from provisioner.rollout.command import resume_command, rollout_command
    from provisioner.state.rollouts import Settings

    options = _options(inventory, parallelism, no_colour, state=state, verbose=verbose, wait=wait)
    if resume_id is not None:
        sys.exit(resume_command(resume_id, list(paths), options, auto_approve=auto_approve))
    if not paths:
        raise click.UsageError("give the manifest paths to roll out, or --resume ID")
    if pause and confirm_each_wave:
        raise click.UsageError("give --pause or --confirm-each-wave, not both")
    settings = Settings(waves, max_failures, pause, confirm_each_wave, lease)
    sys.exit(
        rollout_command(
            list(paths), options, settings=settings, targets=targets, auto_approve=auto_approve
        )
    )


@rollout.command("status")
@click.argument("rollout_id", required=False, type=int)
@state_option
@verbose_option
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "markdown", "html"]),
    default="text",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="write to a file")
def rollout_status(
    rollout_id: int | None,
    state: str | None,
    verbose: bool,
    output_format: str,
    output: Path | None,
) -> None:
    """Show a rollout, running or finished (the latest without an ID)."""
    from provisioner.rollout.command import status_command

    options = _options(None, state=state, verbose=verbose)
    sys.exit(status_command(rollout_id, options, output_format=output_format, output=output))


@app.group()
def render() -> None:
    """Render artefacts for review or manual use."""


@render.command("tsecimp")
@cache_option
@paths_argument
@click.option("--tenant", help="one tenant's users")
@click.option("--server", help="every tenant on one server")
def render_tsecimp(paths: tuple[Path, ...], tenant: str | None, server: str | None) -> None:
    """Print the complete tsecimp XML of the desired line assignments."""
    from provisioner.commands import render_tsecimp as render_xml

    if (tenant is None) == (server is None):
        raise click.UsageError("give exactly one of --tenant and --server")
    click.echo(render_xml(paths, tenant=tenant, server=server), nl=False)


@app.command()
@cache_option
@paths_argument
@inventory_option
@click.option("--server", "name", required=True, help="a server name or a client host name")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
def facts(paths: tuple[Path, ...], inventory: str | None, name: str, output_format: str) -> None:
    """Print what one host looks like now (one gather)."""
    from provisioner.commands import facts_command

    sys.exit(facts_command(paths, _options(inventory), name=name, output_format=output_format))


@app.command()
@cache_option
@paths_argument
@inventory_option
@click.option("--server", "name", required=True, help="a server name or a client host name")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--capture",
    type=click.Path(file_okay=False, path_type=Path),
    help="also save what was read, secrets and user names replaced, for a bug report",
)
def doctor(
    paths: tuple[Path, ...],
    inventory: str | None,
    name: str,
    output_format: str,
    capture: Path | None,
) -> None:
    """Check one host before the first apply: one gather, read-only (exit 1 on a failed check)."""
    from provisioner.doctor import doctor_command

    sys.exit(
        doctor_command(
            paths, _options(inventory), name=name, output_format=output_format, capture=capture
        )
    )


@app.command()
@cache_option
@paths_argument
@inventory_option
@click.option("--server", "name", required=True, help="a test server that holds no tenants")
def conformance(paths: tuple[Path, ...], inventory: str | None, name: str) -> None:
    """Run the host contract's behavioural cases on a test server: creates and removes a
    throw-away TSP instance and firewall rule only; refuses a server that holds tenants."""
    from provisioner.conformance import conformance_command

    sys.exit(conformance_command(paths, _options(inventory), name=name))


@app.command()
@cache_option
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@inventory_option
@click.option("--server", "name", required=True, help="the server to adopt")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="directory for the manifests (existing files are never overwritten)",
)
@click.option(
    "--domain",
    metavar="NETBIOS",
    help="the users' NetBIOS domain, where no Site, administrator or bind account names it",
)
def export(
    paths: tuple[Path, ...], inventory: str | None, name: str, out: Path, domain: str | None
) -> None:
    """Write manifests from a live server: its Site, itself and one file per tenant (PATHS: the
    manifests that already hold its Site)."""
    from provisioner.export import export_command

    for line in export_command(list(paths), inventory, server=name, out=out, domain=domain):
        click.echo(line)


@app.group()
def lab() -> None:
    """A local lab of simulated Windows hosts and a simulated CTI API."""


lab_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("lab"),
    show_default=True,
    help="where the lab keeps its inventory, certificates and log",
)


@lab.command("up")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@lab_dir_option
@click.option("--servers", type=click.IntRange(0, 500), default=0, help="extra generic servers")
@click.option("--clients", type=click.IntRange(0, 500), default=0, help="extra generic clients")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="give up when the lab is not ready after SECONDS, stopping what it started "
    "(default: wait while it starts; a first Samba provisioning takes tens of seconds)",
)
def lab_up(
    paths: tuple[Path, ...], directory: Path, servers: int, clients: int, timeout: float | None
) -> None:
    """Start a lab for the manifests under PATHS (default: each manifests/examples/ folder)."""
    from provisioner.lab import daemon

    examples = Path("manifests/examples")
    manifests = list(paths) or sorted(p for p in examples.glob("*") if p.is_dir())
    if not manifests:
        raise ProvisionerError(
            f"no manifests to simulate: give their paths (provisioner lab up PATH...); "
            f"without paths the lab takes each folder of {examples}/, and there is none here"
        )
    state = daemon.up(
        directory,
        manifests,
        servers=servers,
        clients=clients,
        timeout=timeout,
        progress=lambda line: click.echo(f"lab: {line}", err=True),
    )
    _print_lab(state)
    inventories = state["estate_inventories"] or {"": state["inventory"]}
    for name, inventory in inventories.items():
        click.echo(f"inventory{f' for {name}' if name else ''}: {inventory}")
        click.echo(f"use it:    export PROVISIONER_INVENTORY={inventory}")


@lab.command("status")
@lab_dir_option
def lab_status(directory: Path) -> None:
    """Show the lab's endpoints and per-host message counters."""
    from provisioner.lab import daemon

    _print_lab(daemon.control(directory, "GET", "/status"))


@lab.command("down")
@lab_dir_option
def lab_down(directory: Path) -> None:
    """Stop the lab; no process is left behind."""
    from provisioner.lab import daemon

    stopped = daemon.down(directory)
    click.echo("lab stopped" if stopped else f"no lab runs in {directory}")


@lab.command("tamper")
@click.argument("host")
@click.argument("action")
@click.argument("argument")
@lab_dir_option
def lab_tamper(host: str, action: str, argument: str, directory: Path) -> None:
    """Change the lab behind the provisioner's back (ACTION: remove-firewall-rule, stop-service,
    set-system, set-winrm, open-rpc-port, ...: an unknown one lists them all)."""
    from provisioner.lab import daemon

    answer = daemon.control(
        directory, "POST", "/tamper", {"host": host, "action": action, "argument": argument}
    )
    click.echo(answer["message"])


def _print_lab(state: dict[str, Any]) -> None:
    click.echo(f"{'host':<16} {'role':<7} {'endpoint':<32} {'commands':>8} {'messages':>8}")
    for name, host in state["hosts"].items():
        click.echo(
            f"{name:<16} {host['role']:<7} {host['url']:<32} {host['commands']:>8} "
            f"{host['messages']:>8}"
        )
    click.echo(f"CTI API: {state['cti_api']} ({state['cti_requests']} requests)")
    click.echo(f"Active Directory: {state['active_directory']}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every user error into one line and exit code 1."""
    # A command builds a million small objects and few cycles: the cyclic collector's default
    # (a pass every 700 allocations) would walk them again and again, two thirds of validate.
    gc.set_threshold(50_000, 20, 20)
    try:
        code = app.main(args=argv, prog_name="provisioner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort as exc:
        interrupted = isinstance(exc.__cause__, KeyboardInterrupt)  # click's word for Ctrl-C
        click.echo("interrupted" if interrupted else "aborted", err=True)
        code = EXIT_INTERRUPTED if interrupted else EXIT_ERROR
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        code = EXIT_ERROR
    except Interrupted as exc:
        click.echo(f"interrupted: {exc}", err=True)
        code = EXIT_INTERRUPTED
    except ProvisionerError as exc:
        click.echo(f"error: {exc}", err=True)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = EXIT_INTERRUPTED
    sys.exit(code if isinstance(code, int) else EXIT_OK)
