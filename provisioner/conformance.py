"""``provisioner conformance``: behavioural cases of the host contract, run against one host.

The cases a user needs before trusting a host with a rollout: it answers a gather with the
contract's document; the host's lock is taken by a gather, refused to another owner's gather and
batch (naming the holder), renewed by a batch, taken over only by an owner that names the holder
as the one it replaces, given back by a gather that releases it; a batch stops at its first
failure; a native command that outlives its timeout is stopped and names its setting; the
``tsecimp /d`` listing reads one way only; a TSP instance is created, configured with a sealed
secret, seen in the next gather with a protected key ACL and the secret's fingerprint only, and
removed; a firewall rule is written, changed and removed in a group of its own.

The same cases run in CI against the lab's Windows model, in-process and through real
WS-Management, and on a designated test server before a rollout::

    results = run_cases(connector, gather_request(estate, host), profile)

They create only what no manifest can name: the TSP instance ``CONFORMANCE-<hex>`` (K-accounts
start with K) and one disabled blocking rule ``provisioner conformance <hex>`` (a name with
spaces) in the group ``<firewall group> conformance``. Both are removed at the end whatever
happened, and a host that holds tenants (any TSP instance, any rule of the managed group) is
refused before anything is sent. The suite holds the host's lock from its first gather to its
end, as an apply does, so it never runs beside an apply or rollout.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.commands import EXIT_ERROR, EXIT_OK, Options, load, load_inventory_for
from provisioner.connectors import Connector, over_winrm
from provisioner.doctor import FAILED, MARKS, PASSED, find_host
from provisioner.errors import ProvisionerError
from provisioner.planner import profile_for
from provisioner.platform import Profile
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    ApplyStep,
    FirewallRemove,
    FirewallRuleSpec,
    FirewallUpsert,
    GatherRequest,
    HostFacts,
    LockRequest,
    Operation,
    ServiceControl,
    TspInstanceConfigure,
    TspInstanceCreate,
    TspInstanceFacts,
    TspInstanceRemove,
)
from provisioner.remote.host import HostError, HostLocked
from provisioner.remote.sealing import seal
from provisioner.remote.tsecimp import listing_problems, merge_providers, parse_listing
from provisioner.resources import firewall, tsp_instance
from provisioner.runner import gather_request
from provisioner.secrets import Secret


class CaseFailed(Exception):
    """A case saw the host break the contract; the message says how."""


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    message: str
    seconds: float


@dataclass
class Suite:
    """One run's host, its names for things, and what the cases leave for each other."""

    connector: Connector
    request: GatherRequest
    profile: Profile
    token: str = field(default_factory=lambda: secrets.token_hex(3).upper())
    facts: HostFacts | None = None
    secret: Secret | None = None  # the instance's password, set by the case that creates it
    holding: bool = False  # the host's lock may be the suite's: give it back at the end

    @property
    def owner(self) -> str:
        return f"provisioner conformance {self.token}"

    @property
    def instance(self) -> str:
        return f"CONFORMANCE-{self.token}"

    @property
    def rule_name(self) -> str:
        return f"provisioner conformance {self.token}"

    @property
    def rule_group(self) -> str:
        return f"{self.request.firewall_group} conformance"

    @property
    def server(self) -> bool:
        return self.request.role == "server"

    def gather(self, *, release: bool = False, **changes: object) -> HostFacts:
        """A gather under the suite's lock (taken or renewed; given back when ``release``)."""
        lock = LockRequest(owner=self.owner, release=release)
        self.holding = True
        self.facts = self.connector.gather(
            self.request.model_copy(update={**changes, "lock": lock})
        )
        self.holding = not release
        return self.facts

    def apply(self, *operations: Operation, lock: LockRequest | None = None) -> ApplyResponse:
        steps = [ApplyStep(id=f"c{n}", operation=op) for n, op in enumerate(operations)]
        return self.connector.apply(
            ApplyRequest(
                lock=lock or LockRequest(owner=self.owner),
                steps=steps,
                timeouts=self.request.timeouts,
            )
        )

    def release(self) -> None:
        """Give the host's lock back, if the suite may hold it: an empty batch that releases."""
        if self.holding:
            self.apply(lock=LockRequest(owner=self.owner, release=True))
            self.holding = False

    def applied(self, *operations: Operation) -> ApplyResponse:
        """Apply and require every step to succeed."""
        response = self.apply(*operations)
        failed = next((r for r in response.results if r.status != "ok"), None)
        if response.status != "ok" or failed is not None:
            why = f"{failed.id}: {failed.message}" if failed else response.status
            raise CaseFailed(f"the batch did not succeed ({why})")
        return response

    def create_instance(self) -> TspInstanceCreate:
        return TspInstanceCreate(
            instance=self.instance,
            file=self.profile.instance_file(self.instance),
            provider_name=self.profile.provider_name(self.instance),
            tsp_file=self.profile.tsp_file,
            verpatch_path=self.profile.verpatch_path,
        )

    def configure_instance(
        self, secret: Secret, *, fingerprint_of: Secret | None = None
    ) -> TspInstanceConfigure:
        assert self.facts is not None and self.facts.telephony is not None
        service = self.facts.telephony.service
        sealed = seal(secret, self.facts.seal_key)
        if fingerprint_of is not None:  # a fingerprint that does not fit the sealed value
            sealed = sealed.model_copy(
                update={"fingerprint": seal(fingerprint_of, self.facts.seal_key).fingerprint}
            )
        return TspInstanceConfigure(
            instance=self.instance,
            settings_key=self.profile.settings_key(self.instance),
            k_account=self.instance,
            number_format="international",
            line_name_format="{extension} {name}",
            debug_level=0,
            password=sealed,
            reader=service.account_sid or service.account,
        )

    def remove_instance(self) -> TspInstanceRemove:
        return TspInstanceRemove(
            instance=self.instance,
            file=self.profile.instance_file(self.instance),
            settings_key=self.profile.settings_key(self.instance),
        )

    def rule(self, port: str) -> FirewallUpsert:
        return FirewallUpsert(
            rule=FirewallRuleSpec(
                name=self.rule_name,
                display_name=self.rule_name,
                description="written and removed by provisioner conformance",
                group=self.rule_group,
                direction=1,
                action=0,  # block
                protocol=6,
                local_ports=port,
                remote_addresses="192.0.2.0/24",  # TEST-NET-1 (RFC 5737)
                profiles=firewall.ALL_PROFILES,
                enabled=False,  # and disabled: it opens and closes nothing
            )
        )

    def instance_facts(self) -> TspInstanceFacts | None:
        assert self.facts is not None
        return next(
            (i for i in self.facts.tsp_instances if i.instance.upper() == self.instance), None
        )


# --- the cases --------------------------------------------------------------------------------

Case = Callable[[Suite], str]


def gather(suite: Suite) -> str:
    facts = suite.gather()
    if facts.role != suite.request.role or not facts.computer_name:
        raise CaseFailed(f"the facts say role {facts.role!r}, computer {facts.computer_name!r}")
    if facts.system is None or facts.tools is None or facts.winrm is None:
        raise CaseFailed("the facts lack the preflight's system, tools or WinRM quotas")
    if suite.server and facts.telephony is None:
        raise CaseFailed(f"a server reports no {suite.request.telephony_service} service")
    return (
        f"{facts.computer_name}: Windows {facts.system.windows_version}, PowerShell "
        f"{facts.system.powershell_version}"
    )


def lock(suite: Suite) -> str:
    """The lock as an apply and a rival see it, step by step; it is the suite's at the end."""
    facts = suite.gather()
    if facts.lock is None or facts.lock.owner != suite.owner:
        raise CaseFailed(f"a gather that took the lock reports it held by {_who(facts)}")
    rival = f"{suite.owner} rival"
    try:
        suite.connector.gather(suite.request.model_copy(update={"lock": LockRequest(owner=rival)}))
    except HostLocked as exc:
        if exc.holder.owner != suite.owner:
            raise CaseFailed(f"a refused gather names {exc.holder.owner!r} as the holder") from None
    else:
        raise CaseFailed("another owner's gather took the lock the suite holds")
    refused = suite.apply(lock=LockRequest(owner=rival))
    if refused.status != "locked" or refused.lock is None or refused.lock.owner != suite.owner:
        raise CaseFailed(f"another owner's batch answered {refused.status}, not 'locked' by us")
    suite.applied()  # ours renews it
    over = LockRequest(owner=rival, replaces=suite.owner)
    if _holder(suite.connector.gather(suite.request.model_copy(update={"lock": over}))) != rival:
        raise CaseFailed("an owner that names the holder as replaced did not take the lock over")
    lost = suite.apply()
    if lost.status != "locked" or lost.lock is None or lost.lock.owner != rival:
        raise CaseFailed(f"a batch whose lock was taken over answered {lost.status}")
    back = LockRequest(owner=suite.owner, replaces=rival)
    suite.connector.gather(suite.request.model_copy(update={"lock": back}))
    suite.gather(release=True)
    if (held := suite.connector.gather(suite.request).lock) is not None:
        raise CaseFailed(f"a gather that gave the lock back left it held by {held.owner!r}")
    if suite.apply().status != "locked":
        raise CaseFailed("a batch ran under a lock given back before it")
    suite.gather()  # the suite's again, for the cases that follow
    return (
        "taken by a gather; refused to another owner's gather and batch, naming the holder; "
        "renewed by a batch; taken over by an owner naming the holder replaced, after which the "
        "holder's batch ran nothing; given back by a releasing gather"
    )


def _holder(facts: HostFacts) -> str | None:
    return facts.lock.owner if facts.lock else None


def _who(facts: HostFacts) -> str:
    return repr(facts.lock.owner) if facts.lock else "no one"


def first_failure(suite: Suite) -> str:
    missing = f"ProvisionerConformance-{suite.token}"
    harmless = FirewallRemove(name=suite.rule_name)  # nothing of that name exists yet
    response = suite.apply(harmless, ServiceControl(op="service.start", name=missing), harmless)
    statuses = [r.status for r in response.results]
    if response.status != "failed" or statuses != ["ok", "failed", "not-run"]:
        raise CaseFailed(f"a batch whose second step fails answered {response.status} {statuses}")
    if not response.results[1].message:
        raise CaseFailed("the failed step carries no message")
    return f"stopped at the failed step: {response.results[1].message}"


def timeout(suite: Suite) -> str:
    if not suite.server:
        return "a workstation's gather runs no native command"
    try:
        suite.gather(timeouts=suite.request.timeouts.model_copy(update={"command": 0}))
    except HostError as exc:
        if "command_timeout_seconds" not in str(exc):
            raise CaseFailed(
                f"a native command that ran out of time failed without naming its setting: {exc}"
            ) from None
        suite.gather()  # and the host answers again
        return "tsecimp.exe under a 0 s timeout was stopped: 'command_timeout_seconds' named"
    raise CaseFailed("a gather whose native commands may run 0 s succeeded: no timeout applies")


def listing(suite: Suite) -> str:
    if not suite.server:
        return "a workstation has no listing"
    text = suite.gather().tsecimp_listing
    if text is None:
        raise CaseFailed("the server printed no 'tsecimp /d' listing (is tsecimp.exe there?)")
    providers = merge_providers(parse_listing(text))
    problems = listing_problems(providers)
    if problems:
        raise CaseFailed(f"the listing does not read one way only: {problems[0]}")
    lines = sum(len(p.lines) for p in providers)
    return f"{len(providers)} providers and {lines} lines read one way only"


def instance_created(suite: Suite) -> str:
    if not suite.server:
        return "a workstation holds no TSP instance"
    suite.secret = Secret(secrets.token_urlsafe(18))
    suite.gather()
    suite.applied(suite.create_instance(), suite.configure_instance(suite.secret))
    facts = suite.gather()
    found = suite.instance_facts()
    if found is None or not found.file_present or found.settings is None:
        raise CaseFailed(
            f"the next gather does not show TSP instance {suite.instance} with its settings"
        )
    provider = next((p for p in facts.providers if p.file.upper() == found.file.upper()), None)
    name = suite.profile.provider_name(suite.instance)
    if provider is None or provider.name != name:
        raise CaseFailed(f"{found.file} is not registered as provider {name!r}")
    acl = found.settings_acl
    wanted = _readers(facts)
    if acl is None or not acl.protected or set(tsp_instance.readers(acl)) != wanted:
        readers = ", ".join(tsp_instance.readers(acl)) if acl else "no ACL"
        raise CaseFailed(
            f"the settings key is not protected and readable by {', '.join(sorted(wanted))} "
            f"only: {'protected' if acl and acl.protected else 'inherited'}, readable by {readers}"
        )
    who = ", ".join(sorted(wanted))
    return f"{suite.instance} created and registered; its key readable by {who} only"


def sealed_secret(suite: Suite) -> str:
    if not suite.server:
        return "a workstation keeps no secret"
    before = suite.instance_facts()
    if suite.secret is None or before is None or before.settings is None:
        raise CaseFailed(f"needs TSP instance {suite.instance} (the case before failed)")
    old = suite.secret
    new = Secret(secrets.token_urlsafe(18))
    forged = suite.apply(suite.configure_instance(new, fingerprint_of=old))
    suite.gather()
    kept = suite.instance_facts()
    if forged.status != "failed" or kept is None or kept.settings != before.settings:
        raise CaseFailed("a sealed secret whose fingerprint does not fit it changed the settings")
    configure = suite.configure_instance(new)
    suite.applied(configure)
    facts = suite.gather()
    found = suite.instance_facts()
    stored = found.settings.password if found and found.settings else None
    assert configure.password is not None
    if stored != configure.password.fingerprint:
        raise CaseFailed("the next gather does not show the new secret's fingerprint")
    document = facts.model_dump_json()
    if old.reveal() in document or new.reveal() in document:
        raise CaseFailed("the gather returned a secret in clear")
    return "a mismatched fingerprint changed nothing; the new secret is seen by its fingerprint"


def instance_removed(suite: Suite) -> str:
    if not suite.server:
        return "a workstation holds no TSP instance"
    suite.applied(suite.remove_instance())
    facts = suite.gather()
    registered = any(
        p.file.upper() == suite.profile.instance_file(suite.instance).upper()
        for p in facts.providers
    )
    if suite.instance_facts() is not None or registered:
        raise CaseFailed(f"TSP instance {suite.instance} is still there after its removal")
    return f"{suite.instance} removed: no file, no provider, no settings key"


def firewall_rule(suite: Suite) -> str:
    for port in ("9", "19"):
        suite.applied(suite.rule(port))
        rules = [
            r
            for r in suite.gather(firewall_group=suite.rule_group).firewall_rules
            if r.name == suite.rule_name
        ]
        if len(rules) != 1 or rules[0].local_ports != port or rules[0].enabled:
            shown = [(r.local_ports, r.enabled) for r in rules]
            raise CaseFailed(f"after writing port {port}, the group shows (ports, enabled) {shown}")
        if firewall.canonical_addresses(rules[0].remote_addresses.split(",")) != ["192.0.2.0/24"]:
            raise CaseFailed(f"remote addresses came back as {rules[0].remote_addresses!r}")
    suite.applied(FirewallRemove(name=suite.rule_name))
    if suite.gather(firewall_group=suite.rule_group).firewall_rules:
        raise CaseFailed(f"group {suite.rule_group!r} still holds rules after the removal")
    return f"a rule in {suite.rule_group!r} written, changed and removed"


CASES: tuple[tuple[str, Case], ...] = (
    ("gather", gather),
    ("lock", lock),
    ("stops at the first failure", first_failure),
    ("timeouts named", timeout),
    ("tsecimp listing", listing),
    ("TSP instance created", instance_created),
    ("sealed secret", sealed_secret),
    ("TSP instance removed", instance_removed),
    ("firewall rule", firewall_rule),
)


def _readers(facts: HostFacts) -> set[str]:
    assert facts.telephony is not None
    service = facts.telephony.service
    tapi = tsp_instance.principal(service.account_sid or service.account, service.account)
    return {tsp_instance.principal("S-1-5-18"), tsp_instance.principal("S-1-5-32-544"), tapi}


def cleanup(suite: Suite) -> str:
    """Remove whatever the cases may have left: idempotent, and checked."""
    operations: list[Operation] = [FirewallRemove(name=suite.rule_name)]
    if suite.server:
        operations.insert(0, suite.remove_instance())
    suite.applied(*operations)
    facts = suite.gather(release=True, firewall_group=suite.rule_group)
    left = [r.name for r in facts.firewall_rules]
    if suite.instance_facts() is not None or left:
        raise CaseFailed(
            f"left on the host: remove TSP instance {suite.instance} and rules {left} by hand"
        )
    return "nothing of the run is left on the host"


def refuse_tenants(suite: Suite, tenants: Sequence[str]) -> None:
    """One line, before anything is changed, for a host that is not a test server."""
    if tenants:
        raise ProvisionerError(
            f"the manifests put tenants on this host ({', '.join(tenants)}): conformance runs "
            "only on a test server that holds none; name one with --server"
        )
    facts = suite.connector.gather(suite.request)  # a look, under no lock
    held = [f"TSP instance {i.instance}" for i in facts.tsp_instances]
    held += (
        [f"{len(facts.firewall_rules)} rules of {suite.request.firewall_group}"]
        if facts.firewall_rules
        else []
    )
    if held:
        raise ProvisionerError(
            f"{facts.computer_name} holds tenants ({', '.join(held)}): conformance runs only on "
            "a test server that holds none; name one with --server"
        )


def run_cases(
    connector: Connector, request: GatherRequest, profile: Profile, tenants: Sequence[str] = ()
) -> list[CaseResult]:
    """Every case in order, then the cleanup; a failed case does not stop the others."""
    suite = Suite(connector, request, profile)
    try:
        refuse_tenants(suite, tenants)
        results = []
        try:
            for name, case in CASES:
                results.append(_timed(name, case, suite))
        finally:
            results.append(_timed("cleanup", cleanup, suite))
    finally:
        suite.release()
    return results


def _timed(name: str, case: Case, suite: Suite) -> CaseResult:
    started = time.perf_counter()
    try:
        message, passed = case(suite), True
    except (CaseFailed, ProvisionerError) as exc:
        message, passed = str(exc), False
    return CaseResult(name, passed, message, time.perf_counter() - started)


def conformance_command(paths: Sequence[Path], options: Options, *, name: str) -> int:
    estate = load(paths)
    host = find_host(estate, name)
    inventory = load_inventory_for(estate, options, only=[name])
    tenants = sorted(t.name for t in estate.tenants.values() if t.server == name)
    with over_winrm(estate, inventory)(host) as connector:
        started = time.perf_counter()
        results = run_cases(
            connector, gather_request(estate, host), profile_for(estate, host), tenants
        )
    for result in results:
        mark = MARKS[PASSED if result.passed else FAILED]
        options.echo(f"  {mark} {result.name} ({result.seconds:.2f} s): {result.message}")
    failed = [r.name for r in results if not r.passed]
    options.echo(
        f"{name}: {len(results) - len(failed)} of {len(results)} cases passed in "
        f"{time.perf_counter() - started:.1f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return EXIT_ERROR if failed else EXIT_OK
