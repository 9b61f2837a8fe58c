"""The simulated Windows host, driven through its command handler (no network needed)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from provisioner.lab.windows_host import (
    LAB_CTI_ENGINE_SERVICE,
    LAB_PACKAGES,
    LOCK_FILE,
    READ,
    WRITE,
    CommandResult,
    FirewallRuleRecord,
    LockRecord,
    WindowsHost,
    WindowsHostState,
    com_address_spelling,
    inherited_software_acl,
    lab_package_bytes,
)
from provisioner.remote import scripts
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    ApplyStep,
    FirewallRemove,
    FirewallRuleSpec,
    FirewallUpsert,
    GatherRequest,
    HostFacts,
    LocationSet,
    LockRequest,
    LogonRightGrant,
    PackageInstall,
    ServiceConfigure,
    ServiceControl,
    TapiClientSet,
    TelephonyConfigure,
    Timeouts,
    TsecimpImport,
    TspInstanceConfigure,
    TspInstanceCreate,
    TspInstanceRemove,
    UploadRequest,
    UploadResponse,
    WinRMConfigFacts,
)
from provisioner.remote.sealing import seal
from provisioner.remote.tsecimp import (
    XmlLine,
    XmlUser,
    merge_providers,
    parse_listing,
    render_xml,
)
from provisioner.secrets import Secret

GROUP = "NFON-TAPI-Provisioner"
SETTINGS_KEY = "HKLM\\SOFTWARE\\NFON\\TAPI\\Instances\\{instance}"
FILE_PATTERN = "NFONTSP_{instance}.TSP"
PACKAGE = LAB_PACKAGES[0]
PBX = {
    "K6732": [("100", "Anna Schmidt"), ("101", "Jörg Müller")],
    "K9999": [("100", "Other Tenant")],
}
PASSWORD = "cti-Pa55word!'\"$(x)"
VERPATCH = "C:\\Tools\\verpatch.exe"
SERVICE_ACCOUNT = "NFON\\svc-tapi"
SERVICE_PASSWORD = "Svc-Pa55!"


def package_url(version: str) -> str:
    return f"https://files.nfon.test/NFONTAPI-{version}.msi"


WEB = {package_url(package.version): lab_package_bytes(package.version) for package in LAB_PACKAGES}


def pbx_lines(k_account: str) -> list[tuple[str, str]]:
    return PBX.get(k_account, [])


@pytest.fixture
def host() -> WindowsHost:
    """A server as its admin left it: verpatch downloaded, the service account in the domain."""
    windows = WindowsHost.fresh("TAPI01", pbx_lines=pbx_lines, web=WEB.get)
    windows.add_file(VERPATCH)
    windows.add_account(SERVICE_ACCOUNT, Secret(SERVICE_PASSWORD))
    return windows


OWNER = "alice@ws17 pid 1"


def run(
    host: WindowsHost, request: GatherRequest | ApplyRequest, *, hold: bool = True
) -> CommandResult:
    """One command; a batch after the gather that takes its lock, as an apply sends it
    (unless not ``hold``)."""
    if isinstance(request, ApplyRequest) and hold:
        take_lock(host, request.lock.owner)
    name = "gather" if isinstance(request, GatherRequest) else "apply"
    command, arguments = scripts.command_line()
    return host(command, [" ".join(arguments)], scripts.stdin_payload(scripts.load(name), request))


def take_lock(host: WindowsHost, owner: str = OWNER, **lock) -> CommandResult:
    """The gather an apply's plan is made from: it takes the host's lock (or is refused)."""
    request = gather_request(host.state.role).model_copy(
        update={"lock": LockRequest(owner=owner, **lock)}
    )
    return run(host, request)


def gather_request(role: str = "server") -> GatherRequest:
    return GatherRequest(
        role=role,
        firewall_group=GROUP,
        services=["TapiSrv", LAB_CTI_ENGINE_SERVICE, "Nope"],
        package_name=PACKAGE.name.upper(),
        tsp_file="NFONTSP.TSP",
        instance_file_pattern=FILE_PATTERN,
        instance_settings_key=SETTINGS_KEY,
        verpatch_path=VERPATCH,
    )


def gather(host: WindowsHost, role: str = "server") -> HostFacts:
    result = run(host, gather_request(role))
    assert result.exit_code == 0, result
    return scripts.parse_output(result.stdout, HostFacts)


def apply(
    host: WindowsHost, *operations, owner: str = OWNER, hold: bool = True, **lock
) -> ApplyResponse:
    steps = [ApplyStep(id=f"step-{index}", operation=op) for index, op in enumerate(operations)]
    request = ApplyRequest(lock=LockRequest(owner=owner, **lock), steps=steps)
    result = run(host, request, hold=hold)
    assert result.exit_code == 0, result
    return scripts.parse_output(result.stdout, ApplyResponse)


def apply_ok(host: WindowsHost, *operations) -> ApplyResponse:
    response = apply(host, *operations)
    assert response.status == "ok", response.results
    return response


def listing(host: WindowsHost) -> dict[str, dict[str, list[str]]]:
    """``{provider: {line name: users}}`` from the gathered ``tsecimp /d`` text.

    The lab prints Microsoft's documented layout, users glued onto line names; every user in
    these tests is in the NFON domain, so each ``NFON\\`` starts one.
    """
    text = gather(host).tsecimp_listing
    assert text is not None
    found: dict[str, dict[str, list[str]]] = {}
    for provider in merge_providers(parse_listing(text)):
        for line in provider.lines:
            name, *users = re.split(r"(?=NFON\\)", line.name)
            found.setdefault(provider.name, {})[name] = [*line.users, *users]
    return found


def create_instance(instance: str, k_account: str, line_format: str = "{extension} {name}"):
    return [
        TspInstanceCreate(
            instance=instance,
            file=f"NFONTSP_{instance}.TSP",
            provider_name=f"NFON Third Party TAPI {instance}",
            verpatch_path=VERPATCH,
        ),
        TspInstanceConfigure(
            instance=instance,
            settings_key=SETTINGS_KEY,
            k_account=k_account,
            number_format="international",
            line_name_format=line_format,
            debug_level=0,
        ),
    ]


def rule(name: str, addresses: str = "10.0.2.0/24", **overrides) -> FirewallUpsert:
    spec = {
        "name": name,
        "display_name": name,
        "group": GROUP,
        "direction": 1,
        "action": 1,
        "protocol": 6,
        "local_ports": "135",
        "remote_addresses": addresses,
        "profiles": 2,
    } | overrides
    return FirewallUpsert(rule=FirewallRuleSpec(**spec))


def install(version: str = "1.0.0", **fields) -> PackageInstall:
    sha256 = next(p.sha256 for p in LAB_PACKAGES if p.version == version)
    spec = {"fetch": "https", "source": package_url(version), "sha256": sha256, "version": version}
    return PackageInstall(**(spec | fields))


RESTART = ServiceControl(op="service.restart", name="TapiSrv")


# --- the handler ------------------------------------------------------------------------------


def test_a_fresh_server_gathers_in_one_command(host) -> None:
    facts = gather(host)
    assert (facts.contract, facts.computer_name, facts.role) == (2, "TAPI01", "server")
    assert base64.b64decode(facts.seal_key.exponent) == b"\x01\x00\x01"
    assert len(base64.b64decode(facts.seal_key.modulus)) == 256
    assert facts.lock is None
    assert facts.telephony is not None
    assert facts.telephony.service.start_mode == "manual"
    assert (facts.telephony.server_mode, facts.telephony.administrators) == (False, [])
    assert facts.packages == [] and facts.tsp_instances == [] and facts.firewall_rules == []
    assert [p.file for p in facts.providers] == ["kmddsp.tsp", "ndptsp.tsp", "unimdm.tsp"]
    assert [s.name for s in facts.services] == ["TapiSrv"]
    assert "WAN Miniport (L2TP)" in listing(host)["NDIS Proxy TAPI Service Provider"]
    assert facts.tapi_client is None
    assert len(host.record) == 2 and host.record[0].command == "powershell.exe"
    assert host.state.lock is None  # a gather that did not ask takes no lock


def test_a_workstation_reports_only_what_a_workstation_has() -> None:
    client = WindowsHost.fresh("WS17", role="client")
    facts = gather(client, role="client")
    assert facts.telephony is None and facts.tsecimp_listing is None and facts.providers == []
    assert facts.tapi_client is not None and facts.tapi_client.enabled is False
    response = apply(client, *create_instance("K6732", "K6732"))
    assert response.status == "failed"
    assert "not available on a workstation" in response.results[0].message
    apply_ok(client, TapiClientSet(servers=["tapi01.nfon.test"], connection_oriented=True))
    apply_ok(client, rule("nfon-tapi-out-smb"))
    facts = gather(client, role="client")
    assert facts.tapi_client is not None
    assert facts.tapi_client.model_dump() == {
        "enabled": True,
        "servers": ["tapi01.nfon.test"],
        "connection_oriented": True,
    }
    assert [r.name for r in facts.firewall_rules] == ["nfon-tapi-out-smb"]
    apply_ok(client, TapiClientSet(servers=[], connection_oriented=True))
    assert gather(client, role="client").tapi_client.enabled is False


def test_only_the_bootstrap_command_line_is_run(host) -> None:
    result = host("cmd.exe", ["/c", "whoami"], b"")
    assert result.exit_code == 1 and b"bootstrap" in result.stderr and result.stdout == b""
    command, arguments = scripts.command_line()
    assert host(command, [*arguments[:-1], "VwByAGkAdABlAA=="], b"").exit_code == 1


def test_an_unknown_script_is_refused_clearly(host) -> None:
    command, arguments = scripts.command_line()
    request = GatherRequest(role="server", firewall_group=GROUP)
    tampered = scripts.stdin_payload(scripts.load("gather"), request).replace(
        b"param($request)", b"param($request) Remove-Item C:\\ -Recurse", 1
    )
    result = host(command, arguments, tampered)
    assert result.exit_code == 1 and result.stdout == b""
    assert b"unknown script gather/2:" in result.stderr
    result = host(command, arguments, b"Write-Output 1\n#==provisioner-json==#\n{}")
    assert result.exit_code == 1 and b"without a '# provisioner-contract:' header" in result.stderr


def test_a_broken_payload_gets_an_error_document_like_the_bootstrap(host) -> None:
    command, arguments = scripts.command_line()
    result = host(command, arguments, b"no separator here")
    assert result.exit_code == 1
    with pytest.raises(scripts.RemoteScriptError, match=r"failed: .*#==provisioner-json==#"):
        scripts.parse_output(result.stdout, HostFacts)
    payload = scripts.load("apply").text.encode() + b'#==provisioner-json==#\n{"contract": 2}'
    result = host(command, arguments, payload)
    assert result.exit_code == 1
    with pytest.raises(scripts.RemoteScriptError, match="not an ApplyRequest"):
        scripts.parse_output(result.stdout, ApplyResponse)


# --- each operation, seen by the next gather --------------------------------------------------


def test_package_install_checks_the_sha256_and_upgrades(host) -> None:
    bad = install(sha256="0" * 64)
    response = apply(host, bad)
    assert response.status == "failed" and "sha256" in response.results[0].message
    assert gather(host).packages == []
    apply_ok(host, install())
    facts = gather(host)
    assert [(p.name, p.version, p.product_code) for p in facts.packages] == [
        (PACKAGE.name, PACKAGE.version, PACKAGE.product_code)
    ]
    assert [s.name for s in facts.services] == ["TapiSrv", LAB_CTI_ENGINE_SERVICE]
    assert facts.package_cache == [PACKAGE.sha256]
    apply_ok(host, install("1.1.0"))
    assert [p.version for p in gather(host).packages] == ["1.1.0"]  # a major upgrade


def test_services_and_telephony_are_configured(host) -> None:
    password = seal(Secret(SERVICE_PASSWORD), gather(host).seal_key)
    apply_ok(
        host,
        TelephonyConfigure(server_mode=True, administrators=["NFON\\tapiadmin"]),
        ServiceConfigure(
            name="TapiSrv", start_mode="delayed-auto", account=SERVICE_ACCOUNT, password=password
        ),
        ServiceControl(op="service.start", name="TapiSrv"),
    )
    telephony = gather(host).telephony
    assert telephony is not None
    assert (telephony.server_mode, telephony.administrators) == (True, ["NFON\\tapiadmin"])
    service = telephony.service.model_dump()
    assert service.pop("account_sid", "").startswith("S-1-5-21-")
    assert service == {
        "name": "TapiSrv",
        "state": "running",
        "start_mode": "delayed-auto",
        "account": "NFON\\svc-tapi",
        "logon_right": True,  # granted before the account was set
    }
    apply_ok(host, ServiceControl(op="service.stop", name="TapiSrv"))
    assert gather(host).services[0].state == "stopped"
    response = apply(host, ServiceControl(op="service.start", name="NoSuchService"))
    assert "Cannot find any service" in response.results[0].message


def test_tsp_instances_are_created_configured_and_removed(host) -> None:
    response = apply(host, *create_instance("K6732", "K6732"))
    assert (
        response.status == "failed"
        and "install the NFON TAPI package" in response.results[0].message
    )
    apply_ok(host, install(), *create_instance("K6732", "K6732"))
    facts = gather(host)
    (instance,) = facts.tsp_instances
    assert (instance.instance, instance.file, instance.file_present) == (
        "K6732",
        "NFONTSP_K6732.TSP",
        True,
    )
    assert instance.settings is not None and instance.settings.k_account == "K6732"
    assert instance.settings.password is None
    provider = facts.providers[-1]
    assert (provider.file, provider.name) == ("NFONTSP_K6732.TSP", "NFON Third Party TAPI K6732")
    again = apply_ok(host, create_instance("K6732", "K6732")[0])
    assert again.results[0].data == {
        "file": "NFONTSP_K6732.TSP",
        "copied": "False",
        "registered": "False",
        "provider_id": str(provider.id),
    }
    apply_ok(
        host,
        TspInstanceRemove(instance="K6732", file="NFONTSP_K6732.TSP", settings_key=SETTINGS_KEY),
    )
    facts = gather(host)
    assert facts.tsp_instances == []
    assert "NFONTSP_K6732.TSP" not in [p.file for p in facts.providers]


def test_a_settings_key_without_its_file_is_still_an_instance(host) -> None:
    apply_ok(host, create_instance("K1", "K1")[1])
    (instance,) = gather(host).tsp_instances
    assert (instance.instance, instance.file_present) == ("K1", False)
    assert instance.settings is not None


def test_location_set_creates_updates_and_makes_current(host) -> None:
    berlin = LocationSet(
        name="Berlin", country_code=49, area_code="30", outside_access="0", long_distance_access="0"
    )
    apply_ok(host, berlin, berlin.model_copy(update={"name": "Munich", "area_code": "89"}))
    assert [(x.name, x.current) for x in gather(host).locations] == [
        ("Berlin", False),
        ("Munich", True),
    ]
    apply_ok(host, berlin.model_copy(update={"name": "BERLIN", "international_access": "00"}))
    berlin_facts = gather(host).locations[0]
    assert (berlin_facts.name, berlin_facts.international_access, berlin_facts.current) == (
        "BERLIN",
        "00",
        True,
    )
    response = apply(host, berlin.model_copy(update={"country_code": 0}))
    assert "Country List" in response.results[0].message


def test_firewall_rules_come_back_in_com_spelling(host) -> None:
    apply_ok(
        host,
        rule("nfon-tapi-in-rpc", "10.0.2.0/24,10.0.3.7", local_ports="49152-65535"),
        rule("nfon-tapi-any", "LocalSubnet", protocol=256, local_ports="*"),
        rule("other-group", group="Someone Else"),
    )
    rules = {r.name: r for r in gather(host).firewall_rules}
    assert set(rules) == {"nfon-tapi-in-rpc", "nfon-tapi-any"}
    rpc = rules["nfon-tapi-in-rpc"]
    assert rpc.remote_addresses == "10.0.2.0/255.255.255.0,10.0.3.7/255.255.255.255"
    assert (rpc.protocol, rpc.local_ports, rpc.profiles, rpc.direction) == (6, "49152-65535", 2, 1)
    response = apply_ok(host, rule("nfon-tapi-in-rpc", "10.9.0.0/16"))
    assert response.results[0].data["replaced"] == "1"
    assert [
        r.remote_addresses for r in gather(host).firewall_rules if r.name == "nfon-tapi-in-rpc"
    ] == ["10.9.0.0/255.255.0.0"]
    apply_ok(host, FirewallRemove(name="nfon-tapi-any"))
    assert [r.name for r in gather(host).firewall_rules] == ["nfon-tapi-in-rpc"]
    response = apply(host, rule("bad", "10.0.0.999"), rule("icmp", protocol=1))
    assert "expected range" in response.results[0].message


def test_ports_need_tcp_or_udp(host) -> None:
    response = apply(host, rule("icmp", protocol=1, local_ports="135"))
    assert response.status == "failed" and "ports need protocol" in response.results[0].message


@pytest.mark.parametrize(
    ("given", "spelled"),
    [
        ("*", "*"),
        ("10.0.2.0/24", "10.0.2.0/255.255.255.0"),
        ("10.0.2.0/255.255.255.0", "10.0.2.0/255.255.255.0"),
        ("10.0.0.1", "10.0.0.1/255.255.255.255"),
        ("10.0.0.1 - 10.0.0.9", "10.0.0.1-10.0.0.9"),
        ("localsubnet, dns", "LocalSubnet,DNS"),
        ("fe80::/64", "fe80::/64"),
    ],
)
def test_com_address_spelling(given, spelled) -> None:
    assert com_address_spelling(given) == spelled


# --- TAPI: restart semantics and tsecimp ------------------------------------------------------


def test_provider_changes_show_in_the_listing_only_after_a_restart(host) -> None:
    apply_ok(host, install(), ServiceControl(op="service.start", name="TapiSrv"))
    apply_ok(host, *create_instance("K6732", "K6732"))
    assert "NFON Third Party TAPI K6732" not in listing(host)
    apply_ok(host, RESTART)
    assert listing(host)["NFON Third Party TAPI K6732"] == {
        "100 Anna Schmidt": [],
        "101 Jörg Müller": [],
    }
    apply_ok(host, create_instance("K6732", "K6732", "{name} ({extension})")[1])
    assert "100 Anna Schmidt" in listing(host)["NFON Third Party TAPI K6732"]
    apply_ok(host, RESTART)
    assert "Anna Schmidt (100)" in listing(host)["NFON Third Party TAPI K6732"]
    apply_ok(
        host,
        TspInstanceRemove(instance="K6732", file="NFONTSP_K6732.TSP", settings_key=SETTINGS_KEY),
    )
    assert "NFON Third Party TAPI K6732" in listing(host)
    apply_ok(host, RESTART)
    assert "NFON Third Party TAPI K6732" not in listing(host)


def test_permanent_ids_are_stable_per_instance_and_extension(host) -> None:
    apply_ok(
        host, install(), *create_instance("K6732", "K6732"), *create_instance("K9999", "K9999")
    )
    apply_ok(host, RESTART)

    def ids() -> dict[tuple[str, str], str | None]:
        text = gather(host).tsecimp_listing or ""
        return {
            (provider.name, line.addresses[0]): line.permanent_id
            for provider in merge_providers(parse_listing(text))
            for line in provider.lines
            if line.addresses
        }

    first = ids()
    assert len(set(first.values())) == 3  # extension 100 exists in both tenants
    apply_ok(host, create_instance("K6732", "K6732", "{name}")[1], RESTART)
    assert ids() == first


def assign(*users: XmlUser) -> TsecimpImport:
    return TsecimpImport(xml=render_xml(users), backup_name="tsec-before.txt")


def test_tsecimp_assigns_and_silently_ignores_lines_that_do_not_exist(host) -> None:
    apply_ok(host, install(), *create_instance("K6732", "K6732"), RESTART)
    anna = XmlUser(
        "NFON\\SCHMIDTA",
        "Anna Schmidt",
        True,
        [XmlLine(address="100"), XmlLine(address="4711"), XmlLine(permanent_id="123")],
    )
    response = apply_ok(host, assign(anna))
    assert response.results[0].data["exit_code"] == "0"
    assert response.results[0].data["backup"].endswith("\\backups\\tsec-before.txt")
    assert host.state.backups["tsec-before.txt"].startswith("TAPI Kernel-Mode")
    lines = listing(host)["NFON Third Party TAPI K6732"]
    assert lines == {"100 Anna Schmidt": ["NFON\\SCHMIDTA"], "101 Jörg Müller": []}
    # Merge adds, Remove takes away, NoMerge replaces, no LineList removes everything.
    apply_ok(host, assign(XmlUser("nfon\\schmidta", lines=[XmlLine(address="101")])))
    assert listing(host)["NFON Third Party TAPI K6732"]["101 Jörg Müller"] == ["NFON\\SCHMIDTA"]
    apply_ok(host, assign(XmlUser("NFON\\SCHMIDTA", lines=[XmlLine(address="100", remove=True)])))
    assert listing(host)["NFON Third Party TAPI K6732"]["100 Anna Schmidt"] == []
    apply_ok(host, assign(XmlUser("NFON\\SCHMIDTA", lines=None)))
    assert listing(host)["NFON Third Party TAPI K6732"]["101 Jörg Müller"] == []


def test_tsecimp_keeps_accounts_apart_that_only_full_case_mapping_would_merge(host) -> None:
    """``Straße`` and ``STRASSE`` are two accounts to Windows (one code unit at a time), while
    ``straße`` is the first one again."""
    apply_ok(host, install(), *create_instance("K6732", "K6732"), RESTART)
    apply_ok(host, assign(XmlUser("NFON\\Straße", lines=[XmlLine(address="100")])))
    apply_ok(host, assign(XmlUser("NFON\\STRASSE", lines=[XmlLine(address="101")])))
    apply_ok(host, assign(XmlUser("nfon\\straße", lines=[XmlLine(address="101")])))
    assert sorted((u.domain_user, len(u.lines)) for u in host.state.tsec_users.values()) == [
        ("NFON\\STRASSE", 1),
        ("NFON\\Straße", 2),
    ]


def test_tsecimp_refuses_malformed_xml_and_ambiguous_addresses(host) -> None:
    apply_ok(
        host, install(), *create_instance("A", "K6732"), *create_instance("B", "K9999"), RESTART
    )
    response = apply(host, TsecimpImport(xml="<UserList><User NoMerge=1>", backup_name="b"))
    assert response.status == "failed" and "tsecimp /v rejected" in response.results[0].message
    apply_ok(host, assign(XmlUser("NFON\\X", lines=[XmlLine(address="100")])))  # two lines "100"
    assert all(not users for lines in listing(host).values() for users in lines.values())


# --- lock and batches -------------------------------------------------------------------------


def lock_of(host: WindowsHost, owner: str, *, expires_in: timedelta) -> LockRecord:
    now = datetime.now(UTC)
    host.state.lock = LockRecord(
        owner=owner,
        acquired=(now - timedelta(minutes=1)).isoformat(),
        expires=(now + expires_in).isoformat(),
    )
    return host.state.lock


def refused(result: CommandResult) -> LockRecord | None:
    """The holder a gather that asked for the lock names, or None when it took the lock."""
    try:
        scripts.parse_output(result.stdout, HostFacts)
    except scripts.LockRefused as exc:
        return LockRecord(**exc.holder.model_dump())
    return None


def test_a_lock_held_by_another_owner_stops_everything(host) -> None:
    held = lock_of(host, "bob@ws2 pid 9", expires_in=timedelta(minutes=5))
    assert refused(take_lock(host)) == held  # the plan's gather: refused, nothing else read
    response = apply(host, rule("nfon-tapi-in-smb"), hold=False)
    assert response.status == "locked" and response.results == []
    assert response.lock is not None and response.lock.owner == "bob@ws2 pid 9"
    assert gather(host).firewall_rules == []
    assert gather(host).lock.owner == "bob@ws2 pid 9"  # a plan sees who holds it
    assert host.state.lock == held


def test_a_lapsed_lock_is_taken_by_a_gather_never_by_a_batch(host) -> None:
    lock_of(host, "bob", expires_in=timedelta(hours=-1))
    lost = apply(host, rule("nfon-tapi-in-smb"), hold=False)  # bob's plan may be stale: no
    assert lost.status == "locked" and lost.lock.owner == "bob"
    assert refused(take_lock(host)) is None
    assert host.state.lock.owner == OWNER
    apply_ok(host, rule("nfon-tapi-in-smb"))
    assert host.state.lock.owner == OWNER  # still held: the verifying gather gives it back
    assert [r.name for r in gather(host).firewall_rules] == ["nfon-tapi-in-smb"]
    take_lock(host, release=True)
    assert host.state.lock is None


def test_a_lock_given_back_or_taken_over_is_lost_to_its_batch(host) -> None:
    take_lock(host)
    take_lock(host, release=True)
    gone = apply(host, rule("r"), hold=False)
    assert (gone.status, gone.lock) == ("locked", None)  # given back: lost, though no one has it
    take_lock(host)
    assert refused(take_lock(host, "carol")) == host.state.lock  # not carol's to take
    assert refused(take_lock(host, "carol", replaces="bob")) == host.state.lock  # nor bob's
    assert refused(take_lock(host, "carol", replaces=OWNER)) is None  # named: taken over
    lost = apply(host, rule("r"), hold=False)
    assert lost.status == "locked" and lost.lock.owner == "carol"
    assert gather(host).firewall_rules == []


def test_the_lock_is_renewed_by_every_command_by_the_host_clock() -> None:
    now = [datetime(2030, 1, 1, 12, 0, tzinfo=UTC)]
    clocked = WindowsHost(WindowsHostState.fresh("T"), clock=lambda: now[0])
    clocked.state.lock = LockRecord(owner="bob", acquired="", expires="2030-01-01T12:00:01Z")
    assert refused(take_lock(clocked)) is not None
    now[0] = datetime(2030, 1, 1, 12, 0, 2, tzinfo=UTC)  # bob's lock has lapsed
    assert refused(take_lock(clocked)) is None
    taken = ("2030-01-01T12:00:02Z", "2030-01-01T12:15:02Z")
    assert (clocked.state.lock.acquired, clocked.state.lock.expires) == taken
    now[0] = datetime(2030, 1, 1, 12, 40, tzinfo=UTC)  # lapsed, but no one took it
    assert apply(clocked, rule("r"), hold=False).status == "ok"
    renewed = ("2030-01-01T12:00:02Z", "2030-01-01T12:55:00Z")  # held since the gather
    assert (clocked.state.lock.acquired, clocked.state.lock.expires) == renewed


def test_a_running_command_keeps_the_lock_file_and_others_are_refused_at_once(host) -> None:
    """A batch holds the lock file open while it runs: a rival's gather is refused at once,
    naming the holder, even one that names the holder replaced or finds the lock lapsed; a
    plan's gather and other commands run meanwhile, between the batch's steps."""
    take_lock(host)
    reached, go = threading.Event(), threading.Event()
    real = host._step

    def slow_second_step(operation):
        if operation.rule.name == "second":
            reached.set()
            go.wait(10)
        return real(operation)

    host._step = slow_second_step
    batch = threading.Thread(target=apply, args=(host, rule("first"), rule("second")))
    batch.start()
    try:
        assert reached.wait(10)
        host.state.lock = replace(host.state.lock, expires="2000-01-01T00:00:00Z")
        assert refused(take_lock(host, "carol", replaces=OWNER)).owner == OWNER
        assert [r.name for r in gather(host).firewall_rules] == ["first"]  # mid-batch
        assert gather(host).lock.owner == OWNER
    finally:
        go.set()
        batch.join(10)
    assert [r.name for r in gather(host).firewall_rules] == ["first", "second"]
    assert refused(take_lock(host, "carol")) == host.state.lock  # renewed at the batch's end


def test_another_program_keeping_the_lock_file_open_fails_the_command(host) -> None:
    handle = host.open_files.open(LOCK_FILE, frozenset({READ, WRITE}), frozenset())
    result = take_lock(host)
    assert result.exit_code == 1
    assert b"stays open in another process" in result.stdout
    assert gather(host).lock is None  # no reader gets in either: no holder to name
    host.open_files.close(handle)
    assert refused(take_lock(host)) is None


def test_a_failure_stops_the_batch_and_later_steps_do_not_run(host) -> None:
    bad = install(sha256="f" * 64)
    response = apply(host, rule("first"), bad, rule("third"))
    assert response.status == "failed"
    assert [r.status for r in response.results] == ["ok", "failed", "not-run"]
    assert [r.id for r in response.results] == ["step-0", "step-1", "step-2"]
    assert [r.name for r in gather(host).firewall_rules] == ["first"]
    assert gather(host).lock.owner == OWNER


# --- secrets ----------------------------------------------------------------------------------


def assert_nowhere(clear: str, host: WindowsHost, *outputs: bytes) -> None:
    """Neither the state, nor what the host received, nor what it answered holds ``clear``."""
    blobs = [host.state.to_json(), *(output.decode() for output in outputs)]
    blobs += [repr(command) + command.stdin.decode() for command in host.record]
    for blob in blobs:
        assert clear not in blob
        assert json.dumps(clear)[1:-1] not in blob


def test_sealed_secrets_are_checked_and_only_fingerprints_come_back(host) -> None:
    secret = Secret(PASSWORD)
    host.add_account("NFON\\svc", secret)
    key = gather(host).seal_key
    apply_ok(host, install(), *create_instance("K6732", "K6732"))
    configure = create_instance("K6732", "K6732")[1]
    sealed = seal(secret, key)
    steps = [
        ApplyStep(id="tsp", operation=configure.model_copy(update={"password": sealed})),
        ApplyStep(
            id="svc",
            operation=ServiceConfigure(
                name="TapiSrv", account="NFON\\svc", password=seal(secret, key)
            ),
        ),
    ]
    applied = run(host, ApplyRequest(lock=LockRequest(owner=OWNER), steps=steps))
    assert scripts.parse_output(applied.stdout, ApplyResponse).status == "ok"
    gathered = run(host, gather_request())
    assert_nowhere(PASSWORD, host, applied.stdout, applied.stderr, gathered.stdout)

    facts = gather(host)
    stored = facts.tsp_instances[0].settings.password
    assert stored == sealed.fingerprint
    assert stored.hmac == secret.fingerprint(bytes.fromhex(stored.salt))
    account = facts.telephony.account_password
    assert account.hmac == secret.fingerprint(bytes.fromhex(account.salt))
    assert host.instance_password("K6732") == secret
    assert host.service_password("TapiSrv") == secret
    # Leaving the password out keeps it.
    apply_ok(host, configure)
    assert gather(host).tsp_instances[0].settings.password == sealed.fingerprint
    assert_nowhere(PASSWORD, host)


def test_a_secret_with_a_wrong_fingerprint_or_for_another_host_is_refused(host) -> None:
    apply_ok(host, install(), *create_instance("K6732", "K6732"))
    configure = create_instance("K6732", "K6732")[1]
    sealed = seal(Secret(PASSWORD), gather(host).seal_key)
    forged = sealed.model_copy(
        update={"fingerprint": seal(Secret("other"), gather(host).seal_key).fingerprint}
    )
    response = apply(host, configure.model_copy(update={"password": forged}))
    assert "does not match its fingerprint" in response.results[0].message
    elsewhere = seal(Secret(PASSWORD), gather(WindowsHost.fresh("OTHER")).seal_key)
    response = apply(host, configure.model_copy(update={"password": elsewhere}))
    assert "cannot be opened with this host's seal key" in response.results[0].message
    assert gather(host).tsp_instances[0].settings.password is None


# --- state ------------------------------------------------------------------------------------


def test_the_state_round_trips_through_json(host) -> None:
    apply_ok(
        host,
        install(),
        *create_instance("K6732", "K6732"),
        RESTART,
        assign(XmlUser("NFON\\A", lines=[XmlLine(address="100")])),
        rule("r"),
        LocationSet(
            name="B", country_code=49, area_code="30", outside_access="0", long_distance_access="0"
        ),
    )
    text = host.state.to_json()
    restored = WindowsHostState.from_json(text)
    assert restored == host.state
    assert restored.to_json() == text
    again = WindowsHost(restored, pbx_lines)
    assert gather(again) == gather(host)


# --- the documented rules (provisioner/lab/windows_rules.py) ------------------------------------


def upload(host: WindowsHost, content: bytes, sha256: str | None = None) -> CommandResult:
    request = UploadRequest(
        name="NFONTAPI.msi",
        sha256=sha256 or hashlib.sha256(content).hexdigest(),
        content=base64.b64encode(content).decode(),
    )
    command, arguments = scripts.command_line()
    return host(command, arguments, scripts.stdin_payload(scripts.load("upload"), request))


def test_a_share_is_out_of_reach_unless_the_host_reads_it_by_itself(host) -> None:
    share = install(fetch="unc", source="\\\\files.nfon.test\\software\\NFONTAPI-1.0.0.msi")
    response = apply(host, share)
    assert response.status == "failed"
    assert "access denied" in response.results[0].message
    assert "second hop" in response.results[0].message
    assert gather(host).packages == []
    host.state.readable_shares.append("\\\\FILES.nfon.test\\software\\")
    apply_ok(host, share)
    assert [p.version for p in gather(host).packages] == ["1.0.0"]


def test_a_download_the_web_does_not_answer_fails_like_webclient(host) -> None:
    response = apply(host, install(source="https://files.nfon.test/missing.msi"))
    assert "(404) Not Found" in response.results[0].message
    response = apply(host, install(source=package_url("1.1.0")))  # another file than sha256 says
    assert "has sha256" in response.results[0].message and "nothing was installed" in (
        response.results[0].message
    )
    assert gather(host).packages == []


def test_an_upload_is_kept_under_its_sha256_and_installed_from_the_cache(host) -> None:
    content = lab_package_bytes("1.0.0")
    from_cache = install(fetch="upload", source="NFONTAPI-1.0.0.msi")
    response = apply(host, from_cache)
    assert "was not uploaded to this host" in response.results[0].message
    refused = upload(host, content, sha256="0" * 64)
    assert refused.exit_code == 1
    with pytest.raises(scripts.RemoteScriptError, match=r"arrived with sha256 .* nothing was kept"):
        scripts.parse_output(refused.stdout, UploadResponse)
    assert gather(host).package_cache == []
    kept = scripts.parse_output(upload(host, content).stdout, UploadResponse)
    assert (kept.sha256, kept.size) == (PACKAGE.sha256, len(content))
    assert gather(host).package_cache == [PACKAGE.sha256]
    apply_ok(host, from_cache)
    assert [p.version for p in gather(host).packages] == ["1.0.0"]


def test_a_file_that_is_no_package_is_refused_by_windows_installer(host) -> None:
    content = b"MZ this is not an MSI"
    upload(host, content)
    digest = hashlib.sha256(content).hexdigest()
    response = apply(host, install(fetch="upload", source="x.msi", sha256=digest))
    assert "msiexec exited with 1620 (ERROR_INSTALL_PACKAGE_INVALID" in response.results[0].message


def test_the_same_product_code_upgrades_only_as_a_reinstall(host) -> None:
    apply_ok(host, install("1.0.0"))
    response = apply(host, install("1.0.1", installed_product_code=PACKAGE.product_code))
    message = response.results[0].message
    assert "msiexec exited with 1638 (ERROR_PRODUCT_VERSION" in message
    assert f"set package.product_code: '{PACKAGE.product_code}'" in message
    assert [p.version for p in gather(host).packages] == ["1.0.0"]
    response = apply_ok(host, install("1.0.1", reinstall=True))
    assert response.results[0].data["reinstall"] == "True"
    assert [(p.version, p.product_code) for p in gather(host).packages] == [
        ("1.0.1", PACKAGE.product_code)
    ]
    apply_ok(host, install("1.10.0"))  # a major upgrade replaces it
    assert [p.version for p in gather(host).packages] == ["1.10.0"]
    response = apply(host, install("1.9.0"))  # 1.9 is older than 1.10: no downgrade
    assert "msiexec exited with 1603" in response.results[0].message
    assert [p.version for p in gather(host).packages] == ["1.10.0"]


def test_telephony_runs_as_network_service_until_told_otherwise(host) -> None:
    facts = gather(host)
    assert facts.telephony is not None
    assert facts.telephony.service.account == "NT AUTHORITY\\NetworkService"
    assert facts.telephony.service.account_sid == "S-1-5-20"
    assert facts.telephony.service.logon_right is True
    other = gather_request().model_copy(update={"telephony_service": "Nope"})
    assert scripts.parse_output(run(host, other).stdout, HostFacts).telephony is None


def test_change_answers_its_documented_codes(host) -> None:
    telephony = host.state.services["tapisrv"]
    # a built-in account takes "" as its password, not none
    assert host._change(telephony, "LocalSystem", None) == 21
    assert host._change(telephony, "LocalSystem", "") == 0
    assert host._change(telephony, "NFON\\nobody", "x") == 22
    assert host._change(telephony, SERVICE_ACCOUNT, "wrong") == 15
    assert host._change(telephony, SERVICE_ACCOUNT, None) == 15  # a new account needs its password
    assert host._change(telephony, SERVICE_ACCOUNT, SERVICE_PASSWORD) == 0
    host.state.system.elevated = False  # a filtered token (remote UAC)
    assert host._change(telephony, "LocalSystem", "") == 2


def test_a_change_the_service_database_refuses_names_its_code(host) -> None:
    key = gather(host).seal_key
    unknown = ServiceConfigure(
        name="TapiSrv", account="NFON\\nobody", password=seal(Secret("x"), key)
    )
    message = apply(host, unknown).results[0].message
    assert "does not exist here" in message  # the logon right cannot be granted to it
    wrong = ServiceConfigure(
        name="TapiSrv", account=SERVICE_ACCOUNT, password=seal(Secret("wrong"), key)
    )
    message = apply(host, wrong).results[0].message
    assert message.startswith("Win32_Service.Change for TapiSrv returned 15 (Service Logon Failed")
    assert gather(host).telephony.service.account == "NT AUTHORITY\\NetworkService"
    apply_ok(host, ServiceConfigure(name="TapiSrv", account="LocalSystem"))  # "" is sent
    assert gather(host).telephony.service.account == "LocalSystem"


def test_a_service_whose_account_cannot_log_on_as_a_service_does_not_start(host) -> None:
    telephony = host.state.services["tapisrv"]
    telephony.account = SERVICE_ACCOUNT
    telephony.password_sealed = seal(Secret(SERVICE_PASSWORD), gather(host).seal_key).sealed
    assert gather(host).telephony.service.logon_right is False
    response = apply(host, ServiceControl(op="service.start", name="TapiSrv"))
    assert "cannot log on as a service (error 1069" in response.results[0].message
    assert gather(host).tsecimp_listing == ""  # TAPI cannot start either
    granted = apply_ok(host, LogonRightGrant(account=SERVICE_ACCOUNT))
    assert granted.results[0].data["logon_right"] == "granted"
    assert apply_ok(host, LogonRightGrant(account="nfon\\SVC-TAPI")).results[0].data == {
        "account": "nfon\\SVC-TAPI",
        "logon_right": "held",
    }
    apply_ok(host, ServiceControl(op="service.start", name="TapiSrv"))
    assert gather(host).telephony.service.state == "running"
    host.state.logon_rights.clear()  # taken away while it runs: it keeps running, and listing
    assert gather(host).tsecimp_listing


def test_a_settings_key_nobody_protected_is_readable_by_every_user(host) -> None:
    apply_ok(host, install(), *create_instance("K6732", "K6732"))
    # the key as CreateInstance.bat or a hand would leave it: HKLM\SOFTWARE's inheritance
    record = next(iter(host.state.tsp_settings.values()))
    record.acl = inherited_software_acl()
    acl = gather(host).tsp_instances[0].settings_acl
    assert acl is not None and not acl.protected
    assert {(e.sid, e.name) for e in acl.entries if e.rights & 1} >= {
        ("S-1-5-32-545", "BUILTIN\\Users")
    }
    apply_ok(host, create_instance("K6732", "K6732")[1])  # the script gives it its own ACL
    acl = gather(host).tsp_instances[0].settings_acl
    assert acl.protected
    assert {e.sid for e in acl.entries} == {"S-1-5-18", "S-1-5-32-544", "S-1-5-20"}


def test_verpatch_is_not_in_the_package(host) -> None:
    host.state.files.clear()  # what an admin has who did not download it
    response = apply(host, install(), *create_instance("K6732", "K6732"))
    message = response.results[1].message
    assert message.startswith(f"verpatch.exe is not at {VERPATCH}: download it")
    assert gather(host).tools.verpatch is False
    host.add_file(VERPATCH)
    assert gather(host).tools.verpatch is True


@pytest.mark.parametrize(
    ("tool", "operation", "setting"),
    [
        ("msiexec", install(), "msiexec_timeout_seconds (platform: in the TapiServer"),
        ("tsecimp", assign(XmlUser("NFON\\A")), "command_timeout_seconds"),
        ("stop TapiSrv", RESTART, "service_timeout_seconds"),
        ("sc", ServiceConfigure(name="TapiSrv", start_mode="auto"), "command_timeout_seconds"),
    ],
)
def test_a_tool_that_hangs_is_stopped_and_the_message_names_the_setting(
    host, tool, operation, setting
) -> None:
    host.state.services["tapisrv"].state = "running"
    host.state.hung.append(tool)
    steps = [ApplyStep(id="s", operation=operation)]
    request = ApplyRequest(
        lock=LockRequest(owner="a"), steps=steps, timeouts=Timeouts(msiexec=7, command=3, service=5)
    )
    response = scripts.parse_output(run(host, request).stdout, ApplyResponse)
    message = response.results[0].message
    assert "did not finish within" in message and "was stopped" in message
    assert f"raise the platform profile key {setting}" in message


def test_a_gather_whose_listing_hangs_says_which_setting_to_raise(host) -> None:
    host.state.hung.append("tsecimp")
    result = run(host, gather_request())
    with pytest.raises(scripts.RemoteScriptError, match=r"within 120 s .*command_timeout_seconds"):
        scripts.parse_output(result.stdout, HostFacts)


def test_the_preflight_facts_come_with_every_gather(host) -> None:
    facts = gather(host)
    assert facts.system is not None and facts.tools is not None
    assert (facts.system.windows_version, facts.system.language_mode) == (
        "10.0.17763",
        "FullLanguage",
    )
    assert facts.system.elevated and facts.system.firewall_service_running
    assert (facts.tools.tsecimp, facts.tools.tcmsetup, facts.tools.verpatch) == (True, True, True)
    host.state.system.pending_reboot.append("Windows Update")
    assert gather(host).system.pending_reboot == ["Windows Update"]


# --- what a preflight reads, and how the model fails for it ----------------------------------------


def rule_record(**changes: object) -> FirewallRuleRecord:
    """An enabled inbound rule allowing TCP 135 from anyone in every profile, changed."""
    fields: dict[str, object] = {
        "name": "by hand",
        "description": "",
        "group": "File and Printer Sharing",
        "direction": 1,
        "action": 1,
        "protocol": 6,
        "local_ports": "135",
        "remote_ports": "*",
        "remote_addresses": "*",
        "profiles": 0x7FFFFFFF,
        "enabled": True,
    }
    return FirewallRuleRecord(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "opens"),
    [
        ({}, True),
        ({"local_ports": "RPC"}, True),  # the dynamic RPC ports, by keyword
        ({"local_ports": "RPC-EPMap"}, True),
        ({"local_ports": "*"}, True),
        ({"local_ports": "400-500"}, True),  # reaches 445
        ({"local_ports": "5985,60000"}, True),
        ({"protocol": 256}, True),  # any protocol
        ({"application": "System"}, True),  # SMB is served by System
        ({"application": "%SystemRoot%\\system32\\svchost.exe", "service": "TapiSrv"}, True),
        ({"local_ports": "5986"}, False),
        ({"local_ports": "136-444"}, False),
        ({"protocol": 17}, False),  # UDP
        ({"enabled": False}, False),
        ({"action": 0}, False),  # block
        ({"direction": 2}, False),
        ({"profiles": 4}, False),  # Public only, while Domain is active
        ({"application": "C:\\Apps\\crm.exe"}, False),
        ({"service": "Spooler"}, False),
    ],
)
def test_gather_reports_the_rules_of_any_group_that_open_tapisrvs_ports(host, changes, opens):
    host.state.firewall_rules.append(rule_record(**changes))
    assert [r.name for r in gather(host).open_rpc_rules] == (["by hand"] if opens else [])


def test_gather_reports_the_winrm_quotas_the_listener_enforces(host) -> None:
    assert gather(host).winrm == WinRMConfigFacts(
        max_envelope_size_kb=500,
        max_shells_per_user=30,
        max_concurrent_operations_per_user=1500,
        max_memory_per_shell_mb=1024,
    )


def test_the_tools_are_reported_from_system32_and_a_missing_tsecimp_prints_no_listing(host):
    del host.state.system32["tsecimp.exe"]
    facts = gather(host)
    assert facts.tools is not None and (facts.tools.tsecimp, facts.tools.tcmsetup) == (False, True)
    assert facts.tsecimp_listing is None
    xml = render_xml([XmlUser("NFON\\jdoe", lines=[XmlLine(address="100")])])
    response = apply(host, TsecimpImport(xml=xml, backup_name="b.txt"))
    assert "tsecimp.exe cannot be started" in response.results[0].message


def test_the_firewall_service_is_reported_from_mpssvc(host) -> None:
    host.state.services["mpssvc"].state = "stopped"
    facts = gather(host)
    assert facts.system is not None and not facts.system.firewall_service_running


def test_a_gather_is_asked_whether_the_host_reads_a_share_by_itself(host) -> None:
    share = "\\\\files\\software\\NFONTAPI.msi"
    ask = gather_request().model_copy(update={"package_source": share})
    read = scripts.parse_output(run(host, ask).stdout, HostFacts)
    assert (gather(host).package_source_readable, read.package_source_readable) == (None, False)
    host.state.readable_shares.append("\\\\files\\software\\")
    assert scripts.parse_output(run(host, ask).stdout, HostFacts).package_source_readable


def test_constrained_language_mode_fails_before_any_script_runs(host) -> None:
    host.state.system.language_mode = "ConstrainedLanguage"
    result = run(host, gather_request())
    assert (result.stdout, result.exit_code) == (b"", 1)
    with pytest.raises(scripts.RemoteScriptError, match="supported only on core types"):
        scripts.parse_output(result.stdout, HostFacts, stderr=result.stderr, exit_code=1)


def test_a_native_command_under_a_timeout_of_zero_is_stopped(host) -> None:
    quick = gather_request().model_copy(update={"timeouts": Timeouts(command=0)})
    with pytest.raises(scripts.RemoteScriptError, match=r"within 0 s .*command_timeout_seconds"):
        scripts.parse_output(run(host, quick).stdout, HostFacts)
