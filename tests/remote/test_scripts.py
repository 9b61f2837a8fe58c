"""The remote scripts: valid PowerShell, data only over stdin, one contract on both sides."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import tree_sitter_powershell
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from tree_sitter import Language, Node, Parser

from provisioner.lab import windows_host
from provisioner.lab.windows_host import SIMULATED_OPERATIONS
from provisioner.platform import TIMEOUT_KEYS
from provisioner.remote import contract, scripts
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    ApplyStep,
    Fingerprint,
    FirewallRemove,
    FirewallRuleSpec,
    FirewallUpsert,
    GatherRequest,
    HostFacts,
    LocationSet,
    LockRequest,
    LogonRightGrant,
    PackageInstall,
    SealedSecret,
    ServiceConfigure,
    TapiClientSet,
    TsecimpImport,
    TspInstanceConfigure,
    TspInstanceCreate,
    UploadRequest,
)

POWERSHELL = Language(tree_sitter_powershell.language())
PS1_FILES = sorted(scripts.templates_dir().glob("*.ps1"))

HOSTILE = [
    "'",
    "O'Brien",
    "‘single’ ‚low‛",
    "$(Remove-Item C:\\ -Recurse)",
    "`whoami`",
    "line one\nline two\r\nline three",
    "'; Remove-Item C:\\ -Recurse; '",
    '"; Stop-Computer; "',
    "<>&",
    f"\n{scripts.SEPARATOR}\n{{}}",
    "\u2028 \x00 \t ☎ Müller",
]


def parse(source: str) -> Node:
    return Parser(POWERSHELL).parse(source.encode("utf-8")).root_node


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_problems(source: str) -> list[str]:
    return [
        f"{'ERROR' if node.is_error else 'MISSING'} at line {node.start_point[0] + 1}"
        for node in walk(parse(source))
        if node.is_error or node.is_missing
    ]


def text_of(node: Node) -> str:
    return (node.text or b"").decode("utf-8")


SCRIPTS = ("gather", "apply", "upload")


def test_the_shipped_scripts_are_all_there() -> None:
    assert {"apply.ps1", "bootstrap.ps1", "gather.ps1", "upload.ps1"} <= {
        path.name for path in PS1_FILES
    }


@pytest.mark.parametrize("path", PS1_FILES, ids=lambda path: path.name)
def test_every_script_parses_without_error_or_missing_nodes(path) -> None:
    assert syntax_problems(path.read_text(encoding="utf-8")) == []


def test_the_syntax_check_catches_a_broken_script() -> None:
    assert syntax_problems("function Broken { if ($x -eq 1) { 'a' }\n")


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_names_its_contract_and_is_identified_by_its_hash(name) -> None:
    script = scripts.load(name)
    version = contract.CONTRACT_VERSION
    assert script.text.startswith(f"# provisioner-contract: {name} {version}\n")
    assert re.fullmatch(rf"{name}/{version}:[0-9a-f]{{16}}", script.identity)
    assert scripts.identity_of(script.text + "# one more line\n") != script.identity
    assert scripts.identity_of("Write-Output 1\n") is None


def invoke_operation_labels(source: str) -> set[str]:
    for node in walk(parse(source)):
        if node.type == "function_statement" and any(
            child.type == "function_name" and text_of(child) == "Invoke-Operation"
            for child in node.children
        ):
            return {
                text_of(literal)[1:-1]
                for condition in walk(node)
                if condition.type == "switch_clause_condition"
                for literal in condition.children
                if literal.type == "string_literal"
            }
    raise AssertionError("apply.ps1 has no function Invoke-Operation")


def test_apply_script_and_simulator_implement_exactly_the_contract_operations() -> None:
    in_script = invoke_operation_labels(scripts.load("apply").text)
    assert in_script == contract.OPERATION_NAMES
    assert set(SIMULATED_OPERATIONS) == contract.OPERATION_NAMES


def test_every_operation_model_is_named_in_the_operation_list() -> None:
    names: set[str] = set()
    for model in contract.Operation.__origin__.__args__:  # type: ignore[attr-defined]
        names |= set(model.model_fields["op"].annotation.__args__)
    assert names == contract.OPERATION_NAMES


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_never_turn_data_into_code_nor_write_to_the_host_stream(name) -> None:
    commands = {
        text_of(node).casefold()
        for node in walk(parse(scripts.load(name).text))
        if node.type == "command_name"
    }
    assert not commands & {"invoke-expression", "iex", "write-host", "out-host", "exit"}
    assert "[scriptblock]::create" not in scripts.load(name).text.casefold()


def top_level_assignments(source: str) -> dict[str, str]:
    """``$Name = 'literal'`` lines outside functions: the scripts' named assumptions."""
    return dict(re.findall(r"(?m)^\$(\w+) = '([^']*)'\s*(?:#.*)?$", source))


def test_the_scripts_agree_on_every_shared_assumption() -> None:
    gather = top_level_assignments(scripts.load("gather").text)
    apply = top_level_assignments(scripts.load("apply").text)
    upload = top_level_assignments(scripts.load("upload").text)
    shared = gather.keys() & apply.keys()
    assert {"TelephonyServerKey", "TspKAccountValue", "SealKeyContainer", "StateKey"} <= shared
    assert {name: gather[name] for name in shared} == {name: apply[name] for name in shared}
    assert {"SystemSid", "AdministratorsSid"} <= upload.keys() & apply.keys()
    assert {name: upload[name] for name in upload.keys() & apply.keys()} == {
        name: apply[name] for name in upload.keys() & apply.keys()
    }


def test_gather_and_apply_share_the_hosts_lock_code() -> None:
    """Both scripts take, renew and give back the lock with the one included text: the file
    kept open for writing and shared for reading only, and readers that let it be."""
    block = scripts.read_template("host_lock.ps1")
    assert "[IO.File]::Open($LockPath, 'OpenOrCreate', 'ReadWrite', 'Read')" in block
    assert "[IO.File]::Open($LockPath, 'Open', 'Read', 'ReadWrite')" in block
    for name in ("gather", "apply"):
        text = scripts.load(name).text
        assert text.count(block) == 1 and "provisioner-include" not in text
        assert text.count("Enter-Lock $request['lock']") == 1
        assert "Exit-Lock $entered $request['lock']" in text
        assert "ReadAllText($LockPath" not in text
    assert "Enter-Lock $request['lock'] $true" in scripts.load("gather").text  # may take
    assert "Enter-Lock $request['lock'] $false" in scripts.load("apply").text  # only renews


def test_every_script_that_writes_a_folder_makes_it_private_with_the_one_included_text() -> None:
    shared = scripts.read_template("private_directory.ps1")
    for name in ("gather", "apply", "upload"):
        text = scripts.load(name).text
        assert text.count(shared) == 1 and text.count("function New-PrivateDirectory") == 1


def commands_in(source: str, name: str) -> list[Node]:
    """Every ``command`` node that calls ``name``."""
    return [
        node
        for node in walk(parse(source))
        if node.type == "command"
        and any(
            child.type == "command_name" and text_of(child).casefold() == name.casefold()
            for child in node.children
        )
    ]


def test_every_native_command_runs_under_a_timeout_named_after_its_setting() -> None:
    """No wait without end: every program runs through Invoke-Native with a timeout kind, and
    services are started and stopped with a bounded wait, never by the cmdlets that wait on."""
    apply = scripts.load("apply").text
    calls = commands_in(apply, "Invoke-Native")
    assert len(calls) >= 7  # msiexec, sc.exe, verpatch, tsecimp (3), tcmsetup
    kinds = {text_of(call).rsplit(" ", 1)[-1] for call in calls}
    assert kinds == {"'msiexec'", "'command'"}
    for name in SCRIPTS:
        text = scripts.load(name).text
        for unbounded in ("Start-Process", "Start-Service", "Stop-Service", "Restart-Service"):
            assert not commands_in(text, unbounded), f"{name}.ps1 runs {unbounded}"
        assert ".WaitForExit()" not in text.replace(
            "$process.WaitForExit()  # the redirected streams are complete only now", ""
        )
    for key in TIMEOUT_KEYS:  # the messages name the settings the profile has
        assert key in apply
    assert "command_timeout_seconds" in scripts.load("gather").text


def test_the_bootstrap_decodes_to_the_template_and_the_command_line_is_short_and_constant() -> None:
    command, arguments = scripts.command_line()
    assert command == "powershell.exe"
    assert arguments[:-1] == [
        "-NoLogo",
        "-NoProfile",
        "-NonInteractive",
        "-ExecutionPolicy",
        "Bypass",
        "-EncodedCommand",
    ]
    decoded = base64.b64decode(arguments[-1], validate=True).decode("utf-16-le")
    assert decoded == scripts.read_template("bootstrap.ps1")
    assert scripts.SEPARATOR in decoded
    assert len(" ".join([command, *arguments])) < 8191  # cmd.exe's limit, the tightest one
    assert scripts.is_command_line(command, arguments)
    assert scripts.is_command_line(command, [" ".join(arguments)])  # WinRS joins the arguments
    tampered = [*arguments[:-1], arguments[-1][:-4] + "AAA="]
    assert not scripts.is_command_line(command, tampered)


def hostile_requests(value: str) -> list[BaseModel]:
    sealed = SealedSecret(sealed=value, fingerprint=Fingerprint(salt=value, hmac=value))
    operations = [
        PackageInstall(
            fetch="https",
            source=value,
            sha256=value,
            version=value,
            properties={value: value},
            installed_product_code=value,
        ),
        ServiceConfigure(name=value, account=value, password=sealed),
        LogonRightGrant(account=value),
        TspInstanceCreate(instance=value, file=value, provider_name=value, verpatch_path=value),
        TspInstanceConfigure(
            instance=value,
            settings_key=value,
            k_account=value,
            number_format=value,
            line_name_format=value,
            debug_level=0,
            password=sealed,
            reader=value,
        ),
        LocationSet(
            name=value,
            country_code=49,
            area_code=value,
            outside_access=value,
            long_distance_access=value,
        ),
        FirewallUpsert(
            rule=FirewallRuleSpec(
                name=value,
                display_name=value,
                description=value,
                group=value,
                direction=1,
                action=1,
                protocol=6,
                local_ports=value,
                remote_addresses=value,
                profiles=7,
            )
        ),
        TsecimpImport(xml=value, backup_name=value),
        TapiClientSet(servers=[value, value], connection_oriented=True),
    ]
    return [
        GatherRequest(
            role="server",
            firewall_group=value,
            services=[value],
            package_name=value,
            tsp_file=value,
            instance_file_pattern=value,
            instance_settings_key=value,
            telephony_service=value,
            verpatch_path=value,
            lock=LockRequest(owner=value, replaces=value),
        ),
        ApplyRequest(
            lock=LockRequest(owner=value, replaces=value, release=True),
            steps=[ApplyStep(id=value, operation=op) for op in operations],
        ),
        UploadRequest(name=value, sha256=value, content=value),
    ]


def check_payload(request: BaseModel) -> None:
    name = {GatherRequest: "gather", ApplyRequest: "apply", UploadRequest: "upload"}[type(request)]
    script = scripts.load(name)
    payload = scripts.stdin_payload(script, request)
    template = script.text.encode()  # the template as sent (includes in place)
    assert payload[: len(template)] == template  # no value changes a byte of the code
    assert payload[len(template) :].startswith(f"{scripts.SEPARATOR}\n".encode())
    text, data = scripts.parse_payload(payload)
    assert text.encode() == template
    assert data == json.loads(request.model_dump_json())
    assert type(request).model_validate(data) == request


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_data(value) -> None:
    before = scripts.command_line()
    for request in hostile_requests(value):
        check_payload(request)
    assert scripts.command_line() == before
    assert value not in " ".join(scripts.command_line()[1])


@given(st.text())
def test_any_text_round_trips_through_the_payload(value) -> None:
    check_payload(GatherRequest(role="client", firewall_group=value, services=[value]))


def test_a_request_must_fit_its_script() -> None:
    with pytest.raises(TypeError):
        scripts.stdin_payload(
            scripts.load("apply"), GatherRequest(role="server", firewall_group="")
        )


def test_parse_payload_refuses_stdin_without_separator() -> None:
    with pytest.raises(scripts.RemoteScriptError, match=r"#==provisioner-json==#"):
        scripts.parse_payload(b"Write-Output 1\n{}")


SEAL_KEY = {"modulus": "AQAB", "exponent": "AQAB"}


def test_parse_output_validates_against_the_contract() -> None:
    document = {"contract": 2, "computer_name": "TAPI01", "role": "server", "seal_key": SEAL_KEY}
    facts = scripts.parse_output(
        b"\xef\xbb\xbf" + json.dumps(document).encode() + b"\r\n", HostFacts
    )
    assert facts.computer_name == "TAPI01"
    response = scripts.parse_output(b'{"contract":2,"status":"ok","results":[]}', ApplyResponse)
    assert response.status == "ok"


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"", "printed nothing"),
        (b"   \r\n", "printed nothing"),
        (b"Exception calling Foo", "no JSON document"),
        (b"[1, 2]", "not an object"),
        (
            scripts.failure_document("the registry path is bad", 57),
            "failed: the registry .* line 57",
        ),
        (b'{"contract": 1, "status": "ok"}', "contract version 1"),
        (b'{"contract": 2, "status": "maybe"}', "not a valid ApplyResponse .*status"),
        (b'{"contract": 2, "status": "ok", "extra": 1}', "not a valid ApplyResponse .*extra"),
    ],
)
def test_parse_output_says_clearly_what_is_wrong(stdout, message) -> None:
    with pytest.raises(scripts.RemoteScriptError, match=message) as caught:
        scripts.parse_output(stdout, ApplyResponse)
    assert "\n" not in str(caught.value)


def test_templates_are_found_in_the_repository() -> None:
    directory = scripts.templates_dir()
    assert (directory / "bootstrap.ps1").is_file()
    assert (directory / "tsecimp.xml.j2").is_file()


# -- what powershell.exe says on stderr when it fails before the bootstrap runs -------------------

_OBJS = '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
_PROGRESS = (
    '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    '<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Loading</AV>'
    "<AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>"
)


def clixml(*strings: str, stream: str = "Error") -> bytes:
    records = "".join(f'<S S="{stream}">{s}</S>' for s in strings)
    return f"#< CLIXML\r\n{_OBJS}{_PROGRESS}{records}</Objs>".encode()


def test_a_failure_before_the_script_is_decoded_from_clixml_with_the_exit_code() -> None:
    stderr = clixml(
        "Could not load file or assembly &apos;System.Text.Json&apos; or one of its _x000D__x000A_",
        "dependencies._x000D__x000A_",
        "    + FullyQualifiedErrorId : FileNotFoundException_x000D__x000A_",
    ) + clixml("verbose text", stream="verbose")
    with pytest.raises(scripts.RemoteScriptError) as caught:
        scripts.parse_output(b"", HostFacts, stderr=stderr, exit_code=1)
    assert str(caught.value) == (
        "powershell.exe failed before the script ran (exit code 1): Could not load file or "
        "assembly 'System.Text.Json' or one of its dependencies. + FullyQualifiedErrorId : "
        "FileNotFoundException"
    )


@pytest.mark.parametrize(
    ("record", "shown"),
    [
        ("pair _xD83D__xDCDE_ dialled", "pair 📞 dialled"),  # a surrogate pair: two escapes
        ("lone _xD83D_ half", "lone \ufffd half"),
        ("literal _x005F_x0041_", "literal _x0041_"),  # an escaped underscore
        ("then _x005F__x000A_next", "then _ next"),
        ("lower _x0061_ and upper _x0041_", "lower a and upper A"),
        ("not hex _x00G1_", "not hex _x00G1_"),
        ("terminal _x001B_[2J cleared", "terminal \ufffd[2J cleared"),  # no escape sequences
        ("bidi \u202egnp.exe", "bidi \ufffdgnp.exe"),  # no reordering either
        ("&lt;tag&gt; &amp; more", "<tag> & more"),
    ],
)
def test_clixml_escapes_and_hostile_text(record: str, shown: str) -> None:
    assert scripts.clixml_errors(clixml(record)) == shown


def test_several_clixml_documents_and_a_document_cut_short() -> None:
    two = b"#< CLIXML\r\n" + clixml("first") + clixml("second")
    assert scripts.clixml_errors(two) == "firstsecond"
    cut = clixml("whole record", "half rec")[:-20]  # the stream ended inside the second record
    assert scripts.clixml_errors(cut) == "whole record"


@pytest.mark.parametrize(
    ("stderr", "message"),
    [
        (b"", "printed nothing (exit code 5; was it killed?)"),
        (clixml("only progress", stream="progress"), "printed nothing (exit code 5; was it"),
        (b"Access is denied.\r\n", "printed nothing (exit code 5); stderr: Access is denied."),
    ],
)
def test_no_document_and_no_clixml_error_says_what_is_known(stderr: bytes, message: str) -> None:
    with pytest.raises(scripts.RemoteScriptError) as caught:
        scripts.parse_output(b"", HostFacts, stderr=stderr, exit_code=5)
    assert message in str(caught.value)


def test_a_document_wins_over_progress_on_stderr() -> None:
    document = scripts.failure_document("boom", 3)
    with pytest.raises(scripts.RemoteScriptError, match="the remote script failed: boom"):
        scripts.parse_output(document, HostFacts, stderr=clixml("noise"), exit_code=1)


def test_a_built_in_account_gets_an_empty_password_and_others_the_logon_right_first() -> None:
    """Win32_Service.Change's remarks: a change to or from LocalSystem or NetworkService needs
    StartPassword "" (NULL means "keep the password"); Change grants no logon right."""
    apply = scripts.load("apply").text
    configure = apply[apply.index("function Invoke-ServiceConfigure") :]
    configure = configure[: configure.index("\nfunction ")]
    assert "$arguments['StartPassword'] = ''" in configure
    assert configure.index("Grant-LogonRight") < configure.index("-MethodName Change")
    assert configure.index("Open-SealedSecret") < configure.index("StartPassword'] = ''")


def test_gather_takes_the_telephony_service_from_the_request_as_apply_does() -> None:
    gather = scripts.load("gather").text
    assert "$TelephonyService = [string]$request['telephony_service']" in gather
    assert "'TapiSrv'" not in gather


def function_keys(source: str, function: str) -> set[str]:
    """The keys of every hashtable literal in one function: the document it builds."""
    for node in walk(parse(source)):
        if node.type == "function_statement" and any(
            child.type == "function_name" and text_of(child) == function for child in node.children
        ):
            return {
                text_of(key)
                for literal in walk(node)
                if literal.type == "key_expression"
                for key in literal.children
            }
    raise AssertionError(f"gather.ps1 has no function {function}")


def fields(*models: type[BaseModel]) -> set[str]:
    return {name for model in models for name in model.model_fields}


@pytest.mark.parametrize(
    ("function", "models"),
    [
        ("Get-SystemFacts", (contract.SystemFacts,)),
        ("Get-ToolFacts", (contract.ToolFacts,)),
        ("Get-ServiceFacts", (contract.ServiceFacts,)),
        ("Get-KeyAclFacts", (contract.KeyAclFacts, contract.AceFacts)),
        ("Get-TspInstanceFacts", (contract.TspInstanceFacts, contract.TspSettingsFacts)),
        ("Get-TelephonyFacts", (contract.TelephonyFacts,)),
        ("Get-PackageFacts", (contract.PackageFacts,)),
        ("Get-LocationFacts", (contract.LocationFacts,)),
        ("Get-TapiClientFacts", (contract.TapiClientFacts,)),
        ("ConvertTo-FirewallRuleFacts", (contract.FirewallRuleFacts,)),
        ("Get-WinRMConfigFacts", (contract.WinRMConfigFacts,)),
    ],
)
def test_gather_builds_each_document_with_exactly_the_contracts_fields(function, models) -> None:
    gather = scripts.load("gather").text
    assert function_keys(gather, function) == fields(*models)


def test_gather_fills_every_field_of_the_facts_document() -> None:
    """The one pass at the end: the $facts table and what is added to it per role."""
    gather = scripts.load("gather").text
    one_pass = gather[gather.index("# --- one pass") :]
    start = one_pass.index("$facts = @{")
    indent = one_pass[one_pass.rindex("\n", 0, start) + 1 : start]
    table = one_pass[start : one_pass.index(f"\n{indent}}}", start)]
    keys = set(re.findall(rf"^{indent}    ([a-z_]+) = ", table, re.MULTILINE))
    keys |= set(re.findall(r"\$facts\['([a-z_]+)'\] = ", one_pass))
    assert keys == set(HostFacts.model_fields)


def test_gather_and_the_lab_model_read_the_same_rpc_criteria_from_the_request() -> None:
    """Which rules open TapiSrv's ports: the ports come from the request, the keywords and the
    services beside them are the same on both sides."""
    gather = scripts.load("gather").text
    model = Path(windows_host.__file__).read_text(encoding="utf-8")
    assert "@($request['rpc_ports'])" in gather and "request.rpc_ports" in model
    for token in ("'RPC'", "'RPC-EPMap'", "'RpcSs'", "'System'", "svchost.exe", "@(6, 256)"):
        assert token in gather, token
    for token in ('"rpc"', '"rpc-epmap"', '"rpcss"', '"System"', "svchost.exe", "(6, 256)"):
        assert token in model, token


def test_what_a_command_runs_is_told_from_its_stdin() -> None:
    gather = GatherRequest(role="client", firewall_group="g")
    lock = LockRequest(owner="o")
    batch = ApplyRequest(lock=lock, steps=[ApplyStep(id="a", operation=FirewallRemove(name="r"))])
    release = ApplyRequest(lock=lock.model_copy(update={"release": True}), steps=[])
    upload = UploadRequest(name="p.msi", sha256="0" * 64, content="")
    kinds = [
        scripts.kind_of(scripts.stdin_payload(scripts.load(name), request))
        for name, request in (
            ("gather", gather),
            ("apply", batch),
            ("apply", release),
            ("apply", ApplyRequest(lock=lock, steps=[])),
            ("upload", upload),
        )
    ]
    assert kinds == ["gather", "apply", "release", "apply", "upload"]
    edited = scripts.stdin_payload(scripts.load("gather"), gather).replace(b"$", b"$x", 1)
    assert scripts.kind_of(edited) == "?"  # not the script as shipped
    assert scripts.kind_of(b"not a payload") == "?"
