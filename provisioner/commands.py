"""What ``plan``, ``apply``, ``drift``, ``render`` and ``facts`` do, apart from parsing options.

Each function returns an exit code; the command line only parses options and prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from provisioner.directory.reader import read_directory
from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory, inventory_file, load_inventory
from provisioner.inventory import check as check_inventory
from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from provisioner.pbx import PbxFacts
from provisioner.plan.model import Action, Plan
from provisioner.planner import (
    Host,
    HostPlan,
    PlanInputs,
    build_plan,
    context,
    hosts,
    profile_for,
)
from provisioner.remote.contract import HostFacts
from provisioner.remote.tsecimp import render_xml
from provisioner.render import drift as drift_render
from provisioner.render import markdown, text
from provisioner.render.json_format import plan_to_json
from provisioner.resources.line_assignment import desired_xml_users
from provisioner.resources.services import cti_engine_name
from provisioner.resources.users_group import KIND as GROUP
from provisioner.runner import HostResult, Journal, Run, friendly_names, verify
from provisioner.saved_plan import SavedPlan

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


@dataclass
class Options:
    inventory: str | None = None
    parallelism: int = 10
    colour: bool = False
    echo: Callable[[str], None] = click.echo
    verbose: bool = False  # every change of a large plan, not one line per tenant


def load(paths: Sequence[Path]) -> Estate:
    estate, errors = load_estate(paths)
    refuse(errors, "in the manifests: fix them (provisioner validate lists them)")
    return estate


def load_inventory_for(
    estate: Estate, options: Options, only: Sequence[str] | None = None
) -> Inventory:
    """The inventory, checked against the manifests before anything is sent anywhere."""
    inventory = load_inventory(options.inventory)
    names = [h.name for h in hosts(estate)] if only is None else only
    problems = check_inventory(inventory, estate, names, services=only is None)
    refuse(problems, "in the inventory or the secrets and CA files the run needs")
    return inventory


def refuse(errors: Sequence[ProvisionerError], what: str) -> None:
    """Print each problem on its own line, then stop with one line that counts them."""
    if errors:
        for error in errors:
            click.echo(str(error), err=True)
        plural = "s" if len(errors) != 1 else ""
        raise ProvisionerError(f"{len(errors)} problem{plural} {what}")


def make_plan(run: Run, estate: Estate, targets: Sequence[str]) -> tuple[Plan, dict[str, HostPlan]]:
    inputs = run.inputs()
    return build_plan(estate, inputs, targets=targets)


def plan_command(
    paths: Sequence[Path],
    options: Options,
    *,
    targets: Sequence[str],
    out: Path | None,
    output_format: str,
    detailed_exitcode: bool,
    output: Path | None = None,
) -> int:
    estate = load(paths)
    inventory = load_inventory_for(estate, options)
    with Run(estate, inventory, parallelism=options.parallelism) as run:
        plan, _ = make_plan(run, estate, targets)
    if output is not None:
        write_report(output, render(plan, output_format, colour=False).rstrip("\n") + "\n")
        options.echo(f"{plan.summary()} The plan is written to {output}.")
    else:
        write_plan(plan, output_format, options)
    if out is not None:
        SavedPlan.of(plan, paths, inventory_file(options.inventory)).write(out)
        options.echo(f"Saved the plan to {out}: apply it with 'provisioner apply --plan {out}'.")
    if plan.problems:
        return EXIT_ERROR
    return EXIT_CHANGES if detailed_exitcode and plan.has_changes else EXIT_OK


def write_plan(plan: Plan, output_format: str, options: Options) -> None:
    """Print the plan; text is written as it is made (a large plan is never one string)."""
    if output_format != "text":
        options.echo(render(plan, output_format, options.colour))
        return
    for chunk in text.plan_chunks(plan, colour=options.colour, verbose=options.verbose):
        options.echo(chunk)


def render(plan: Plan, output_format: str, colour: bool) -> str:
    if output_format == "json":
        return json.dumps(plan_to_json(plan), indent=2, ensure_ascii=False)
    if output_format == "markdown":
        return markdown.render_plan(plan)
    return text.render_plan(plan, colour=colour)


def apply_command(
    paths: Sequence[Path],
    options: Options,
    *,
    targets: Sequence[str],
    saved_path: Path | None,
    auto_approve: bool,
) -> int:
    saved = SavedPlan.read(saved_path) if saved_path else None
    if saved is not None:
        if targets:
            raise ProvisionerError("a saved plan keeps the targets it was made with: drop --target")
        paths = saved.manifest_paths(paths)
        targets = saved.targets
    elif not paths:
        raise ProvisionerError("give the manifest paths to apply, or --plan FILE")
    estate = load(paths)
    if saved is not None:  # every offline check before any host, directory or PBX is contacted
        saved.check_offline(paths, inventory_file(options.inventory))
    inventory = load_inventory_for(estate, options)
    with Run(estate, inventory, parallelism=options.parallelism) as run:
        plan, host_plans = make_plan(run, estate, targets)
        if saved is not None:
            saved.check_fresh(plan)
        write_plan(plan, "text", options)
        group_changes = [
            c for c in plan.actionable if c.kind == GROUP and c.address not in plan.held_back
        ]
        for address in plan.held_back:  # host_plans hold only what goes ahead
            options.echo(f"  held back: {address} (a problem above concerns it)")
        pending = group_changes + [c for hp in host_plans.values() for c in hp.changes]
        if not any(c.action is not Action.NOOP for c in pending):
            return EXIT_ERROR if plan.problems else EXIT_OK
        journal = Journal()  # fails here, before anything changed, if it cannot be written
        if not auto_approve:
            try:
                confirm(options)
            except ProvisionerError:
                journal.path.unlink(missing_ok=True)  # nothing was applied: nothing to record
                raise
        results = []
        if group_changes:
            results.append(run.apply_directory(group_changes))
            journal.record(results[-1])
        results += run.apply(host_plans, journal)
        for result in results:
            for outcome in result.changes:
                mark = {"ok": "✓", "failed": "✗", "not-run": "·", "unknown": "?"}[outcome.status]
                suffix = f": {outcome.message}" if outcome.message else ""
                options.echo(f"  {mark} {outcome.change.address} {outcome.status}{suffix}")
            if result.status != "ok":
                options.echo(f"{result.host.name}: {result.status}: {result.message}")
        applied = {r.host.key for r in results}
        after_facts, after_problems = run.gather([h for h in run.hosts if h.key in applied])
        inputs = PlanInputs(
            facts=after_facts,
            problems=after_problems,
            resolve=inventory.resolve,
            extensions=run.pbx.extensions,
            # the plan's user policies hold for the check too (removed lines stay removed);
            # AD is read again so that group changes are checked against AD as it is now
            directory=read_directory(estate, inventory) if run.directory.read_sites else None,
        )
        after, _ = build_plan(estate, inputs, targets=[])
    leftovers = verify(after, results)
    leftovers += [f"{p.host}: not verified: {p.message}" for p in after_problems if p.host]
    for line in leftovers:
        options.echo(f"  ! {line}")
    for line in health(estate, after_facts, run.pbx, results):
        options.echo(f"  health: {line}")
    done = sum(1 for r in results for c in r.changes if c.status == "ok")
    total = sum(len(r.changes) for r in results)
    failed_hosts = [r.host.name for r in results if r.status != "ok"]
    options.echo(
        f"Apply {'complete' if not failed_hosts and not leftovers else 'incomplete'}: "
        f"{done} of {total} changes done"
        + (f"; failed on {', '.join(failed_hosts)}" if failed_hosts else "")
        + (f"; {len(leftovers)} did not verify" if leftovers else "")
        + f". Journal: {journal.path}"
    )
    return EXIT_ERROR if failed_hosts or leftovers or plan.problems else EXIT_OK


def health(
    estate: Estate, facts: dict[str, HostFacts], pbx: PbxFacts, results: list[HostResult]
) -> list[str]:
    """Per tenant on an applied server: does the CTI engine run, does the CTI login work?"""
    lines = []
    applied = {r.host.name for r in results if r.host.role == "server"}
    for tenant in sorted(estate.tenants.values(), key=lambda t: t.name):
        if tenant.server not in applied:
            continue
        server = estate.servers[tenant.server]
        host_facts = facts.get(f"server/{tenant.server}")
        engine_state = "not managed"
        if server.cti_engine is not None and host_facts is not None:
            host = Host(f"server/{server.name}", server.name, "server")
            wanted = (cti_engine_name(server, profile_for(estate, host)) or "").lower()
            found = next((s for s in host_facts.services if s.name.lower() == wanted), None)
            engine_state = found.state if found else "missing"
        login = "ok" if tenant.name in pbx.extensions else "FAILED"
        lines.append(
            f"tenant {tenant.name} on {tenant.server}: CTI engine {engine_state}, "
            f"CTI API login {login}"
        )
    return lines


def confirm(options: Options) -> None:
    if not sys.stdin.isatty():
        raise ProvisionerError(
            "apply needs confirmation and there is no terminal: add --auto-approve"
        )
    answer = click.prompt(
        "Apply these changes? Only 'yes' is accepted", default="", show_default=False
    )
    if answer.strip() != "yes":
        raise ProvisionerError("apply cancelled: nothing was changed")


def drift_command(
    paths: Sequence[Path],
    options: Options,
    *,
    output_format: str,
    output: Path | None,
    targets: Sequence[str] = (),
) -> int:
    estate = load(paths)
    inventory = load_inventory_for(estate, options)
    with Run(estate, inventory, parallelism=options.parallelism) as run:
        plan, _ = make_plan(run, estate, targets)
    report = drift_render.drift_report(plan)
    renderer = {
        "text": drift_render.render_text,
        "json": drift_render.render_json,
        "markdown": drift_render.render_markdown,
        "html": drift_render.render_html,
    }[output_format]
    document = renderer(report)
    if output is not None:
        write_report(output, document)
        options.echo(f"{report.summary()} Report written to {output}.")
    else:
        options.echo(document.rstrip("\n"))
    if any(not p.found for p in plan.problems):  # something could not be checked
        return EXIT_ERROR
    return EXIT_CHANGES if report.has_drift or plan.problems else EXIT_OK


def write_report(path: Path, document: str) -> None:
    try:
        path.write_text(document, encoding="utf-8")
    except OSError as exc:
        raise ProvisionerError(f"{path}: cannot write the report: {exc.strerror}") from None


def render_tsecimp(paths: Sequence[Path], *, tenant: str | None, server: str | None) -> str:
    estate = load(paths)
    if tenant is not None:
        if tenant not in estate.tenants:
            raise ProvisionerError(
                f"tenant {tenant!r} is not defined (known: {', '.join(sorted(estate.tenants))})"
            )
        server = estate.tenants[tenant].server
    assert server is not None
    if server not in estate.servers:
        raise ProvisionerError(
            f"server {server!r} is not defined (known: {', '.join(sorted(estate.servers))})"
        )
    ctx = context(estate, Host(f"server/{server}", server, "server"), PlanInputs(facts={}))
    if tenant is not None:
        ctx.tenants = [t for t in ctx.tenants if t.name == tenant]
    return render_xml(desired_xml_users(ctx, friendly_names(ctx)))


def facts_command(paths: Sequence[Path], options: Options, *, name: str, output_format: str) -> int:
    estate = load(paths)
    matching = [h for h in hosts(estate) if h.name == name]
    if not matching:
        known = ", ".join(h.name for h in hosts(estate))
        raise ProvisionerError(f"no server or client host named {name!r} (known: {known})")
    inventory = load_inventory_for(estate, options, only=[name])
    with Run(estate, inventory, only=[name]) as run:
        facts, problems = run.gather(matching)
    if problems:
        raise ProvisionerError(problems[0].message)
    found = facts[matching[0].key]
    if output_format == "json":
        options.echo(json.dumps(without_fingerprints(found.model_dump(mode="json")), indent=2))
    else:
        options.echo(describe_facts(found))
    return EXIT_OK


def without_fingerprints(value: object) -> object:
    """Facts for printing: a stored secret's salt and HMAC would let anyone test guesses."""
    if isinstance(value, dict):
        if set(value) == {"salt", "hmac"}:
            return "(set)"
        return {k: without_fingerprints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_fingerprints(v) for v in value]
    return value


def describe_facts(facts: HostFacts) -> str:
    lines = [f"{facts.computer_name} ({facts.role}), contract {facts.contract}"]
    if facts.system:
        system = facts.system
        reboot = ", ".join(system.pending_reboot) or "none"
        lines.append(
            f"  Windows {system.windows_version} ({system.windows_product}), PowerShell "
            f"{system.powershell_version} {system.language_mode}, "
            f"{'elevated' if system.elevated else 'NOT elevated'}, "
            f"{system.system_drive_free_bytes // 2**20} MB free, pending reboot: {reboot}"
        )
    if facts.tools:
        present = {True: "present", False: "MISSING"}
        lines.append(
            f"  tools: tsecimp {present[facts.tools.tsecimp]}, tcmsetup "
            f"{present[facts.tools.tcmsetup]}, verpatch {present[facts.tools.verpatch]}"
        )
    if facts.lock:
        lines.append(f"  locked by {facts.lock.owner} until {facts.lock.expires}")
    if facts.telephony:
        t = facts.telephony
        lines.append(
            f"  Telephony: {t.service.state}, {t.service.start_mode}, as {t.service.account}"
            f"{'' if t.service.logon_right is not False else ' (no logon right)'}, "
            f"server mode {'on' if t.server_mode else 'off'}, administrators: "
            f"{', '.join(t.administrators) or '(none)'}"
        )
    for package in facts.packages:
        lines.append(f"  package {package.name} {package.version}")
    for service in facts.services:
        lines.append(
            f"  service {service.name}: {service.state}, {service.start_mode}, as {service.account}"
        )
    for provider in facts.providers:
        lines.append(f"  provider {provider.id}: {provider.name} ({provider.file})")
    for instance in facts.tsp_instances:
        settings = instance.settings
        detail = (
            f"{settings.k_account}, {settings.number_format}, '{settings.line_name_format}', "
            f"debug {settings.debug_level}, password {'set' if settings.password else 'not set'}"
            if settings
            else "not configured"
        )
        lines.append(f"  TSP instance {instance.instance} ({instance.file}): {detail}")
    for location in facts.locations:
        mark = " (current)" if location.current else ""
        lines.append(
            f"  location {location.name}: +{location.country_code} {location.area_code}{mark}"
        )
    lines.append(f"  {len(facts.firewall_rules)} managed firewall rules")
    for rule in facts.firewall_rules:
        lines.append(
            f"    {rule.name}: direction {rule.direction}, protocol {rule.protocol}, "
            f"local ports {rule.local_ports}, remote {rule.remote_addresses}"
        )
    if facts.tapi_client:
        c = facts.tapi_client
        lines.append(
            f"  TAPI client: {'on' if c.enabled else 'off'}, servers "
            f"{', '.join(c.servers) or '-'}, connection-oriented {c.connection_oriented}"
        )
    if facts.tsecimp_listing:
        lines.append("  tsecimp /d:")
        lines.extend(f"    {line}" for line in facts.tsecimp_listing.splitlines())
    return "\n".join(lines)
