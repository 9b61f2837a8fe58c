"""Each bad input gives one exact ``FILE:LINE:COL: message`` line, and validate exits 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.manifest import load_estate
from tests.manifest.estate import CLIENTS, SERVER, SITE, TENANT, write_estate

RULE = """\
  rules:
    - name: extra
      direction: in
      protocol: tcp
      local_ports: {ports}
"""


TENANT_B = TENANT.replace("name: k6732", "name: k7001").replace("K6732", "K7001")


def case(id: str, files: dict[str, str | bytes], where: str, message: str):
    return pytest.param(files, where, message, id=id)


CASES = [
    # --- YAML and file level ---------------------------------------------------------------
    case(
        "duplicate-key",
        {"k6732.yaml": TENANT + "k_account: K1\n"},
        "k6732.yaml:11:1",
        "duplicate key 'k_account': a key may appear once per mapping",
    ),
    case(
        "unclosed-flow",
        {"k6732.yaml": TENANT.replace('["100"]', '["100"')},
        "k6732.yaml:9:3",
        "did not find expected ',' or ']'",
    ),
    case(
        "tab-indent",
        {"k6732.yaml": TENANT.replace("  - user: NFON\\bob", "\t- user: x")},
        "k6732.yaml:9:1",
        "a tab cannot indent YAML: use spaces",
    ),
    case(
        "not-utf8",
        {"k6732.yaml": TENANT.encode().replace(b"alice", b"al\xe9ce")},
        "k6732.yaml:7:18",
        "byte 0xe9 is not UTF-8: save the file as UTF-8",
    ),
    case("empty-file", {"k6732.yaml": "\n  \n"}, "k6732.yaml:1:1", "file is empty"),
    case(
        "only-comments",
        {"k6732.yaml": "# nothing\n---\n"},
        "k6732.yaml:1:1",
        "file holds no YAML document",
    ),
    case(
        "nul-byte",
        {"k6732.yaml": TENANT + "x: \x00\n"},
        "k6732.yaml:11:1",
        "file holds NUL characters: is it a binary file?",
    ),
    case(
        "billion-laughs",
        {
            "k6732.yaml": (
                "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                + "".join(
                    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
                    for i in range(8)
                )
            )
        },
        "k6732.yaml:2:8",
        "anchors and aliases expand this document beyond 1,000,000 values",
    ),
    case(
        "recursive-alias",
        {"k6732.yaml": "kind: Tenant\nloop: &l [1, *l]\n"},
        "k6732.yaml:2:14",
        "an alias refers to its own anchor",
    ),
    case(
        "too-big",
        {"k6732.yaml": "kind: Tenant\n" + "# padding\n" * 1_000_000},
        "k6732.yaml:1:1",
        "file is 9.5 MiB; the limit is 4 MiB",
    ),
    # --- document level --------------------------------------------------------------------
    case(
        "not-a-mapping",
        {"k6732.yaml": "- kind: Tenant\n"},
        "k6732.yaml:1:1",
        "a document must be a mapping with 'kind' and 'name', not a list",
    ),
    case(
        "missing-kind",
        {"k6732.yaml": TENANT.replace("kind: Tenant\n", "")},
        "k6732.yaml:1:1",
        "'kind' is missing: one of Site, TapiServer, Tenant, TapiClients",
    ),
    case(
        "unknown-kind",
        {"k6732.yaml": TENANT.replace("kind: Tenant", "kind: Tennant")},
        "k6732.yaml:1:7",
        "unknown kind 'Tennant' (did you mean Tenant?)",
    ),
    case(
        "duplicate-name",
        {"k7001.yaml": TENANT_B.replace("name: k7001", "name: k6732")},
        "k7001.yaml:2:7",
        "Tenant 'k6732' is already defined at ",
    ),
    case(
        "unknown-field",
        {"k6732.yaml": TENANT.replace("server:", "servr:")},
        "k6732.yaml:4:1",
        "unknown field 'servr' (did you mean 'server'?)",
    ),
    case(
        "missing-field",
        {"k6732.yaml": TENANT.replace("server: tapi01\n", "")},
        "k6732.yaml:1:1",
        "server is required",
    ),
    case(
        "bad-name",
        {"k6732.yaml": TENANT.replace("name: k6732", "name: K_6732")},
        "k6732.yaml:2:7",
        "name: 'K_6732' is not valid: use lower-case letters, digits and '-'",
    ),
    # --- values ------------------------------------------------------------------------------
    case(
        "k-account-number",
        {"k6732.yaml": TENANT.replace("k_account: K6732", "k_account: 6732")},
        "k6732.yaml:3:12",
        "k_account: Input should be a valid string, not a number",
    ),
    case(
        "k-account-pattern",
        {"k6732.yaml": TENANT.replace("k_account: K6732", "k_account: X6732")},
        "k6732.yaml:3:12",
        "k_account: 'X6732' is not valid: a K-account is 'K' followed by letters or digits",
    ),
    case(
        "plaintext-secret",
        {"k6732.yaml": TENANT.replace("{env: K6732_PW}", "hunter2")},
        "k6732.yaml:5:15",
        "cti_password: plaintext secret: write {env: NAME} or {file: PATH} instead of the value",
    ),
    case(
        "secret-both",
        {"k6732.yaml": TENANT.replace("{env: K6732_PW}", "{env: A, file: b}")},
        "k6732.yaml:5:15",
        "cti_password: a secret reference names exactly one of env or file",
    ),
    case(
        "secret-bad-env",
        {"k6732.yaml": TENANT.replace("{env: K6732_PW}", "{env: 'A B'}")},
        "k6732.yaml:5:21",
        "cti_password.env: 'A B' is not valid: an environment variable name has letters",
    ),
    case(
        "line-as-number",
        {"k6732.yaml": TENANT.replace('["100"]', "[100]")},
        "k6732.yaml:8:13",
        "assignments[0].lines[0]: Input should be a valid string, not a number",
    ),
    case(
        "line-letters",
        {"k6732.yaml": TENANT.replace('["100"]', '["10a"]')},
        "k6732.yaml:8:13",
        "assignments[0].lines[0]: '10a' is not valid: an extension is a quoted string of digits",
    ),
    case(
        "no-lines",
        {"k6732.yaml": TENANT.replace('["100"]', "[]")},
        "k6732.yaml:8:12",
        "assignments[0].lines: List should have at least 1 item",
    ),
    case(
        "user-no-domain",
        {"k6732.yaml": TENANT.replace("NFON\\alice", "alice")},
        "k6732.yaml:7:11",
        "assignments[0].user: 'alice' is not DOMAIN\\sam",
    ),
    case(
        "user-too-long",
        {"k6732.yaml": TENANT.replace("alice", "a" * 21)},
        "k6732.yaml:7:11",
        "assignments[0].user: account 'aaaaaaaaaaaaaaaaaaaaa' has 21 characters; sAMAccountName allows 1-20",
    ),
    case(
        "user-forbidden",
        {"k6732.yaml": TENANT.replace("alice", "al*ce")},
        "k6732.yaml:7:11",
        "assignments[0].user: account 'al*ce' contains '*', not allowed in sAMAccountName",
    ),
    case(
        "user-domain-long",
        {"k6732.yaml": TENANT.replace("NFON\\alice", "VERYLONGDOMAINNAME\\a")},
        "k6732.yaml:7:11",
        "assignments[0].user: 'VERYLONGDOMAINNAME' is not a NetBIOS domain name",
    ),
    case(
        "debug-level",
        {"k6732.yaml": TENANT + "debug_level: 12\n"},
        "k6732.yaml:11:14",
        "debug_level: Input should be less than or equal to 9",
    ),
    case(
        "number-format",
        {"k6732.yaml": TENANT + "number_format: e164\n"},
        "k6732.yaml:11:16",
        "number_format: 'e164' is not allowed: input should be 'international'",
    ),
    case(
        "line-name-no-ext",
        {"k6732.yaml": TENANT + 'line_name_format: "{name}"\n'},
        "k6732.yaml:11:19",
        "line_name_format: the line name must contain {extension}",
    ),
    case(
        "line-name-unknown",
        {"k6732.yaml": TENANT + 'line_name_format: "{extension} {mail}"\n'},
        "k6732.yaml:11:19",
        "line_name_format: unknown placeholder {mail}",
    ),
    case(
        "server-address",
        {"tapi01.yaml": SERVER.replace("10.0.1.20", "10.0.1.300")},
        "tapi01.yaml:3:10",
        "address: value is not a valid IPv4 or IPv6 address",
    ),
    case(
        "subnet-host-bits",
        {"tapi01.yaml": SERVER.replace("10.0.2.0/24", "10.0.2.5/24")},
        "tapi01.yaml:4:18",
        "client_subnets[0]: value is not a valid IPv4 or IPv6 network",
    ),
    case(
        "port-range",
        {"tapi01.yaml": SERVER + RULE.format(ports="[70000]")},
        "tapi01.yaml:11:21",
        "firewall.rules[0].local_ports[0]: 70000: ports run from 1 to 65535",
    ),
    case(
        "port-backwards",
        {"tapi01.yaml": SERVER + RULE.format(ports='["200-100"]')},
        "tapi01.yaml:11:21",
        "firewall.rules[0].local_ports[0]: '200-100': the range runs backwards",
    ),
    case(
        "remote-address",
        {
            "tapi01.yaml": SERVER
            + RULE.format(ports="[5986]")
            + "      remote_addresses: [10.9.0.0/33]\n"
        },
        "tapi01.yaml:12:26",
        "firewall.rules[0].remote_addresses[0]: '10.9.0.0/33' is not an IP address, network or range",
    ),
    case(
        "sha256",
        {"tapi01.yaml": SERVER + "package: {version: '1.0', source: x, sha256: abc}\n"},
        "tapi01.yaml:7:46",
        "package.sha256: 'abc' is not valid: a SHA-256 is 64 hexadecimal characters",
    ),
    case(
        "version-float",
        {"tapi01.yaml": SERVER + "package: {version: 1.0, source: x, sha256: " + "a" * 64 + "}\n"},
        "tapi01.yaml:7:20",
        "package.version: Input should be a valid string, not a number",
    ),
    case(
        "password-no-account",
        {"tapi01.yaml": SERVER + "telephony: {service_password: {env: X}}\n"},
        "tapi01.yaml:7:12",
        "telephony: service_password is set but service_account is not",
    ),
    case(
        "ldap-cleartext",
        {"site.yaml": SITE.replace("ldaps://", "ldap://")},
        "site.yaml:5:13",
        "directory.ldap_url: ldap:// sends the bind password in clear",
    ),
    # --- across documents ------------------------------------------------------------------
    case(
        "unknown-server",
        {"k6732.yaml": TENANT.replace("server: tapi01", "server: tapi02")},
        "k6732.yaml:4:9",
        "server 'tapi02' is not defined (known: tapi01)",
    ),
    case(
        "client-unknown-server",
        {"clients.yaml": CLIENTS.replace("[tapi01]", "[tapi01, tapi9]")},
        "clients.yaml:4:19",
        "server 'tapi9' is not defined (known: tapi01)",
    ),
    case(
        "client-server-twice",
        {"clients.yaml": CLIENTS.replace("[tapi01]", "[tapi01, tapi01]")},
        "clients.yaml:4:19",
        "server 'tapi01' is listed twice",
    ),
    case(
        "unknown-site",
        {"tapi01.yaml": SERVER + "site: elsewhere\n"},
        "tapi01.yaml:7:7",
        "site 'elsewhere' is not defined (known: lab)",
    ),
    case(
        "line-twice-same-user",
        {"k6732.yaml": TENANT.replace('["100"]', '["100", "100"]')},
        "k6732.yaml:8:20",
        "line 100 is listed twice",
    ),
    case(
        "line-two-users",
        {"k6732.yaml": TENANT.replace('["101", "102"]', '["101", "100"]')},
        "k6732.yaml:10:20",
        "line 100 is already assigned to NFON\\alice: set 'shared: true'",
    ),
    case(
        "user-twice",
        {"k6732.yaml": TENANT.replace("NFON\\bob", "nfon\\ALICE")},
        "k6732.yaml:9:11",
        "nfon\\ALICE already has an assignment at ",
    ),
    case(
        "isolation",
        {"k7001.yaml": TENANT_B},
        "k7001.yaml:7:11",
        "NFON\\alice is already a user of tenant 'k6732' (k6732.yaml:7:11)",
    ),
    case(
        "same-k-account",
        {
            "k7001.yaml": TENANT_B.replace("K7001", "K6732")
            .replace("alice", "carol")
            .replace("bob", "dave")
        },
        "k7001.yaml:3:12",
        "tenant 'k6732' already runs K6732 on server 'tapi01'",
    ),
    case(
        "phonebook-no-location",
        {"k6732.yaml": TENANT + "number_format: phonebook\n"},
        "k6732.yaml:11:16",
        "number format phonebook needs Windows dialing rules",
    ),
    case(
        "icmp-ports",
        {"tapi01.yaml": SERVER + RULE.format(ports="[1]").replace("tcp", "icmpv4")},
        "tapi01.yaml:11:20",
        "protocol icmpv4 has no ports: drop local_ports or use tcp/udp",
    ),
    case(
        "rule-name-twice",
        {
            "tapi01.yaml": SERVER
            + RULE.format(ports="[1]")
            + RULE.format(ports="[2]").replace("  rules:\n", "")
        },
        "tapi01.yaml:12:13",
        "rule name 'extra' is already used by rules[0] ('extra')",
    ),
    case(
        "rule-name-preset",
        {"tapi01.yaml": SERVER + RULE.format(ports="[1]").replace("extra", "nfon-tapi-in-smb")},
        "tapi01.yaml:8:13",
        "rule name 'nfon-tapi-in-smb' is already used by rule "
        "'nfon-tapi-in-smb' of preset nfon-tapi-server",
    ),
    case(
        "rule-overlaps-preset",
        {
            "tapi01.yaml": SERVER
            + RULE.format(ports="[135]")
            + "      remote_addresses: [10.0.2.0/24]\n"
        },
        "tapi01.yaml:8:7",
        "rule 'extra' matches the same traffic as rule 'nfon-tapi-in-rpc-epmap'",
    ),
    case(
        "preset-no-subnets",
        {"tapi01.yaml": SERVER.replace("client_subnets: [10.0.2.0/24]\n", "")},
        "tapi01.yaml:5:13",
        "preset nfon-tapi-server opens the server to client_subnets",
    ),
    case(
        "client-preset-on-server",
        {
            "tapi01.yaml": SERVER.replace(
                "[nfon-tapi-server]", "[nfon-tapi-server, nfon-tapi-client]"
            )
        },
        "tapi01.yaml:6:31",
        "preset nfon-tapi-client is for TapiClients",
    ),
    case(
        "basic-auth",
        {"site.yaml": SITE.replace("auth: ntlm", "auth: basic")},
        "tapi01.yaml:2:7",
        "basic auth sends the password in a form anyone on the path can reuse",
    ),
    case(
        "same-address",
        {"tapi02.yaml": SERVER.replace("tapi01", "tapi02")},
        "tapi02.yaml:3:10",
        "address 10.0.1.20 is already the address of server 'tapi01'",
    ),
    case(
        "platform-key",
        {"tapi01.yaml": SERVER + "platform: {cti_engine: X}\n"},
        "tapi01.yaml:7:12",
        "platform: unknown key 'cti_engine' (known: ",
    ),
    case(
        "users-group-no-domain",
        {"k6732.yaml": TENANT + "users_group: K6732-Users\n"},
        "k6732.yaml:11:14",
        "users_group: 'K6732-Users' is not DOMAIN\\sam",
    ),
    case(
        "users-group-other-domain",
        {"k6732.yaml": TENANT + "users_group: OTHER\\K6732-Users\n"},
        "k6732.yaml:11:14",
        "users_group OTHER\\K6732-Users is not in the Site's domain NFON",
    ),
    case(
        "batch-size",
        {
            "site.yaml": SITE.replace(
                "  bind_password: {env: AD_PW}", "  bind_password: {env: AD_PW}\n  batch_size: 1000"
            )
        },
        "site.yaml:8:15",
        "directory.batch_size: Input should be less than or equal to 999",
    ),
    case(
        "cti-api-cleartext",
        {"site.yaml": SITE + "cti_api: {base_url: 'http://cti.example/v1'}\n"},
        "site.yaml:15:10",
        "cti_api: http:// sends the CTI API password in clear",
    ),
    case(
        "ldap-bad-port",
        {"site.yaml": SITE.replace("ldaps://dc1.nfon.test", "ldaps://dc1.nfon.test:63x")},
        "site.yaml:5:13",
        "directory.ldap_url: 'ldaps://dc1.nfon.test:63x': Port could not be cast",
    ),
    case(
        "friendly-name-control",
        {
            "k6732.yaml": TENANT.replace(
                '    lines: ["100"]', '    lines: ["100"]\n    friendly_name: "A\\x0bB"'
            )
        },
        "k6732.yaml:9:20",
        "assignments[0].friendly_name: holds the control character U+000B; remove it",
    ),
    # a line break in a name the tool writes could print a forged entry into the tsecimp
    # listing; a bidirectional override hides text from a reviewer (YAML escapes below)
    *[
        case(
            f"line-name-format-control-{code}",
            {"k6732.yaml": TENANT + f'line_name_format: "{{extension}} {escape}{{name}}"\n'},
            "k6732.yaml:11:19",
            f"line_name_format: holds the control character U+{code}; remove it",
        )
        for escape, code in (
            ("\\n", "000A"),
            ("\\r", "000D"),
            ("\\N", "0085"),
            ("\\L", "2028"),
            ("\\u202e", "202E"),
            ("\\ufeff", "FEFF"),
        )
    ],
    case(
        "platform-placeholder",
        {"tapi01.yaml": SERVER + "platform: {instance_file_pattern: 'X_{Instance}.TSP'}\n"},
        "tapi01.yaml:7:35",
        "platform.instance_file_pattern: the only placeholder allowed is {instance}",
    ),
    case(
        "host-twice",
        {"more.yaml": CLIENTS.replace("office", "lab2").replace("ws1, ws2", "WS2")},
        "more.yaml:3:9",
        "host 'WS2' is already in TapiClients 'office'",
    ),
]


@pytest.mark.parametrize(("files", "where", "message"), CASES)
def test_bad_input_is_reported_at_its_place(
    tmp_path: Path, files: dict[str, str | bytes], where: str, message: str
) -> None:
    write_estate(tmp_path, **{name.replace(".yaml", "_yaml"): text for name, text in files.items()})
    _, errors = load_estate([tmp_path])
    lines = [str(e).replace(f"{tmp_path}/", "") for e in errors]
    expected = f"{where}: {message}"
    assert any(line.startswith(expected) for line in lines), "\n".join(lines)


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


def test_the_base_estate_is_valid(tmp_path: Path) -> None:
    estate, errors = load_estate([write_estate(tmp_path)])
    assert errors == []
    assert set(estate.tenants) == {"k6732"}
