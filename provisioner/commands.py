"""What ``plan``, ``apply``, ``drift``, ``render`` and ``facts`` do, apart from parsing options.

Each function returns an exit code; the command line only parses options and prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import click

from provisioner.converge import (
    Outcome,
    Work,
    carry_out,
    grouped_notes,
    held_lines,
    plan_of,
    result_lines,
    verify,
    work_of,
)
from provisioner.errors import Interrupted, ProvisionerError
from provisioner.host_locks import HostLocks, holder_text, lapsed
from provisioner.inventory import Inventory, inventory_file, load_inventory
from provisioner.inventory import check as check_inventory
from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Plan
from provisioner.planner import (
    Host,
    HostPlan,
    PlanInputs,
    context,
    hosts,
)
from provisioner.remote.contract import HostFacts
from provisioner.remote.tsecimp import render_xml
from provisioner.render import drift as drift_render
from provisioner.render import markdown, text
from provisioner.render.json_format import plan_to_json
from provisioner.resources.line_assignment import desired_xml_users
from provisioner.runner import HostResult, Reading, Run, default_owner, friendly_names
from provisioner.saved_plan import SavedPlan
from provisioner.state.store import RunRecord, StateStore, recorded_run

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


@dataclass
class Options:
    inventory: str | None = None
    parallelism: int = 10
    colour: bool = False
    verbose: bool = False  # every change of a large plan, every tenant of a repeated note
    state: str | None = None  # --state URL
    wait: float = 0.0  # --wait: how long to queue behind another apply's or rollout's host lock
    echo: Callable[[str], None] = click.echo


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
    return plan_of(estate, run.inventory, run.read(), targets)


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
    with (
        StateStore.open(options.state) as store,
        Run(estate, inventory, parallelism=options.parallelism) as run,
        recorded_run(store, "plan", manifests=paths, targets=targets, owner=run.owner) as run_id,
    ):
        plan, _ = make_plan(run, estate, targets)
        status = "problems" if plan.problems else "changes" if plan.has_changes else "no-changes"
        store.finish_run(run_id, status, "\n".join([plan.summary(), *run.retry_lines()]))
    shown = plan
    if output_format == "text":
        shown = replace(plan, notes=grouped_notes(plan.notes, verbose=options.verbose))
    if output is not None:
        write_report(output, render(shown, output_format, colour=False).rstrip("\n") + "\n")
        options.echo(f"{plan.summary()} The plan is written to {output}.")
    else:
        write_plan(shown, output_format, options)
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
    """Apply as named steps: every offline check, then read (each host's gather takes its
    lock), plan, show, hold back, confirm, record, carry out (each batch renews the lock),
    verify (each gather gives the lock back), summarise. A host with nothing to do gets its lock
    back before the confirmation, and every lock still held when the run ends, whatever ended
    it."""
    saved, paths, targets = saved_plan_or_manifests(saved_path, paths, targets)
    estate = load(paths)
    if saved is not None:  # every offline check before any host, directory or PBX is contacted
        saved.check_offline(paths, inventory_file(options.inventory))
    inventory = load_inventory_for(estate, options)
    locks = HostLocks(default_owner())
    with (
        StateStore.open(options.state, connections=options.parallelism) as store,
        Run(estate, inventory, parallelism=options.parallelism, locks=locks) as run,
    ):
        reading = run.read(wait_s=options.wait)
        plan, host_plans = plan_of(estate, inventory, reading, targets)
        if saved is not None:
            saved.check_fresh(plan)
        show_plan(plan, options)
        work = work_of(plan, host_plans)
        for line in held_lines(work.held, verbose=options.verbose):
            options.echo(f"  {line}")
        run.release([h for h in run.hosts if h.key not in work.busy])  # free before the prompt
        if not work.pending:
            return EXIT_ERROR if plan.problems else EXIT_OK
        if not auto_approve:
            confirm("Apply these changes?")
        with recorded_run(
            store, "apply", manifests=paths, targets=targets, owner=run.owner
        ) as run_id:
            results = carry_out_recorded(run, work, reading, store, run_id)
            check = verify(run, reading, results, work)
            outcome = Outcome(plan, work, results, check)
            summarise(outcome, options, store, run_id, retried=run.retry_lines())
        store.ensure_recorded()
    return outcome.exit_code


def show_plan(plan: Plan, options: Options) -> None:
    notes = grouped_notes(plan.notes, verbose=options.verbose)
    write_plan(replace(plan, notes=notes), "text", options)


def carry_out_recorded(
    run: Run, work: Work, reading: Reading, store: StateStore, run_id: int
) -> list[HostResult]:
    """The work, each batch recorded; Ctrl-C lets the batches on their way finish."""
    try:
        results = carry_out(run, work, reading, RunRecord(store, run_id, worker=run.owner))
    except KeyboardInterrupt:
        raise Interrupted(
            f"the batches already sent finished and are recorded as run {run_id} in "
            f"{store.where}; nothing more was sent: run plan to see what remains"
        ) from None
    return results


def summarise(
    outcome: Outcome, options: Options, store: StateStore, run_id: int, *, retried: list[str]
) -> None:
    """Each change's result, what did not verify, the tenants' health, the counts; the store
    also keeps the reads that ran again (printed as they happened)."""
    check = outcome.check
    assert check is not None
    lines = [f"  {line}" for line in result_lines(outcome.results)]
    lines += [f"  ! {line}" for line in check.leftovers]
    lines += [f"  note: {line}" for line in check.notes]
    lines += [f"  health: {tenant}" for tenant in check.health]
    summary = outcome.summary()
    summary[0] = summary[0].rstrip(".") + f". Recorded as run {run_id} in {store.where}."
    for line in lines + summary:
        options.echo(line)
    status = "complete" if outcome.complete else "incomplete"
    store.finish_run(run_id, status, "\n".join([summary[0], *retried]))


def saved_plan_or_manifests(
    saved_path: Path | None, paths: Sequence[Path], targets: Sequence[str]
) -> tuple[SavedPlan | None, Sequence[Path], Sequence[str]]:
    """The saved plan (when given) with the manifests and targets it was made with."""
    if saved_path is None:
        if not paths:
            raise ProvisionerError("give the manifest paths to apply, or --plan FILE")
        return None, paths, targets
    saved = SavedPlan.read(saved_path)
    if targets:
        raise ProvisionerError("a saved plan keeps the targets it was made with: drop --target")
    return saved, saved.manifest_paths(paths), saved.targets


def confirm(question: str, command: str = "apply") -> None:
    if not sys.stdin.isatty():
        raise ProvisionerError(
            f"{command} needs confirmation and there is no terminal: add --auto-approve"
        )
    answer = click.prompt(f"{question} Only 'yes' is accepted", default="", show_default=False)
    if answer.strip() != "yes":
        raise ProvisionerError(f"{command} cancelled: nothing was changed")


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
        lapse = " (lapsed)" if lapsed(facts.lock) else ""
        lines.append(f"  locked by {holder_text(facts.lock)}{lapse}")
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
