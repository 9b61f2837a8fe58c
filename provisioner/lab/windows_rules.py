"""The documented Windows behaviour the lab's Windows model reproduces, each with its source.

The lab is an adversary, not a mirror of our scripts: every rule below was written down from a
public source before the scripts were checked against it, and the model
(:mod:`provisioner.lab.windows_host`) cites the rule's name beside the code that enforces it
(``# rule: SECOND_HOP``). A test holds the two together: every rule is cited, every citation
names a rule.

Where a source leaves a detail open (which return code a case gives), the rule says what the
lab answers and why; ``doctor`` on a real host is how such a detail gets checked.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    behaviour: str
    source: str


RULES: tuple[Rule, ...] = (
    Rule(
        "SECOND_HOP",
        "A command run over WinRM with NTLM, Basic or Negotiate cannot pass the caller's "
        "credentials on to a third machine: reading a UNC share from the session is access "
        "denied (Copy-Item: \"Access to the path '...' is denied.\") unless the host reaches the "
        "share by itself (CredSSP, Kerberos delegation, or a share readable without the caller's "
        "credentials).",
        "https://learn.microsoft.com/powershell/scripting/security/remoting/ps-remoting-second-hop",
    ),
    Rule(
        "SERVICE_CHANGE_CODES",
        "Win32_Service.Change returns a code instead of throwing: 0 Success, 2 Access Denied, "
        "15 Service Logon Failed, 21 Status Invalid Parameter, 22 Status Invalid Service Account, "
        "among others (0-24).",
        "https://learn.microsoft.com/windows/win32/cimwin32prov/change-method-in-class-win32-service",
    ),
    Rule(
        "BUILTIN_ACCOUNT_PASSWORD",
        "Changing a service between LocalSystem and NT AUTHORITY\\NetworkService (or "
        'LocalService) needs StartPassword = "" (an empty string), not NULL. The page does not '
        "say which code a NULL gives; the lab answers 21 (Status Invalid Parameter).",
        "https://learn.microsoft.com/windows/win32/cimwin32prov/change-method-in-class-win32-service"
        " (Remarks)",
    ),
    Rule(
        "SERVICE_ACCOUNT_PASSWORD",
        "When an account is assigned to a service the SCM requires that account's correct "
        "password; a wrong one is rejected. The page names no code; the lab answers 15 (Service "
        "Logon Failed). An account that does not exist gives 22 (Status Invalid Service Account).",
        "https://learn.microsoft.com/windows/win32/cimwin32prov/change-method-in-class-win32-service"
        " (Remarks)",
    ),
    Rule(
        "CHANGE_NEEDS_ADMIN",
        "Win32_Service.Change without the rights to reconfigure the service returns 2 (Access "
        "Denied); a local account other than the built-in Administrator gets a filtered, "
        "non-elevated token over WinRM (remote UAC), so it lands here.",
        "https://learn.microsoft.com/windows/win32/cimwin32prov/change-method-in-class-win32-service;"
        " https://learn.microsoft.com/windows/win32/wmisdk/user-account-control-and-wmi",
    ),
    Rule(
        "LOGON_RIGHT",
        "An account a service runs as needs the 'Log on as a service' right "
        "(SeServiceLogonRight). Setting the account with Win32_Service.Change does not grant it. "
        "Starting the service without it fails with ERROR_SERVICE_LOGON_FAILED (1069), as does a "
        "stored password the account no longer has. LocalSystem needs no right; Network Service "
        "and Local Service hold it by definition.",
        "https://learn.microsoft.com/windows/security/threat-protection/security-policy-settings/"
        "log-on-as-a-service; https://learn.microsoft.com/windows/win32/api/winsvc/"
        "nf-winsvc-startservicea (ERROR_SERVICE_LOGON_FAILED)",
    ),
    Rule(
        "LSA_ADD_ACCOUNT_RIGHTS",
        "LsaAddAccountRights grants a right to an account's SID (granting one it holds is no "
        "error); a name that cannot be translated to a SID fails before anything is granted "
        "(IdentityNotMappedException: 'Some or all identity references could not be "
        "translated.').",
        "https://learn.microsoft.com/windows/win32/api/ntsecapi/nf-ntsecapi-lsaaddaccountrights;"
        " https://learn.microsoft.com/dotnet/api/system.security.principal.ntaccount.translate",
    ),
    Rule(
        "TAPISRV_DEFAULTS",
        "The Telephony service (TapiSrv) starts manually and runs as NT AUTHORITY\\NetworkService "
        "in a shared svchost. A third-party catalogue of service defaults (its Windows 7 page), "
        "not Microsoft: 'doctor' checks it on a real host.",
        "https://revertservice.com/7/tapisrv/",
    ),
    Rule(
        "HKLM_SOFTWARE_DEFAULT_ACL",
        "Keys created under HKLM\\SOFTWARE inherit its permissions: Users Read, Administrators "
        "and SYSTEM Full Control, CREATOR OWNER Full Control (subkeys), ALL APPLICATION "
        "PACKAGES Read. Anything written there without an explicit, protected ACL is readable by "
        "every local user.",
        "DISA Windows Server 2019 STIG V-205737 'default permissions for the HKEY_LOCAL_MACHINE "
        "registry hive must be maintained' (https://stigviewer.com/stigs/"
        "microsoft_windows_server_2019)",
    ),
    Rule(
        "MSI_EXIT_CODES",
        "msiexec exits 0 on success, 1641 (restart initiated) and 3010 (restart required) on "
        "success that needs a restart, 1605 when the product is not installed, 1618 while another "
        "installation runs, 1619/1620 when the package cannot be opened or is not a valid "
        "package, 1638 when another version of the product is installed.",
        "https://learn.microsoft.com/windows/win32/msi/error-codes",
    ),
    Rule(
        "MSI_SAME_PRODUCT_CODE",
        "A package with the ProductCode of an installed product but another version (a minor "
        "upgrade) installs only as a reinstall: msiexec /i PACKAGE REINSTALL=ALL "
        "REINSTALLMODE=vomus; a plain /i ends with 1638. The same package again is a "
        "maintenance run that changes nothing.",
        "https://learn.microsoft.com/windows/win32/msi/minor-upgrades; "
        "https://learn.microsoft.com/windows/win32/msi/"
        "applying-small-updates-by-reinstalling-the-product",
    ),
    Rule(
        "MSI_MAJOR_UPGRADE",
        "A package with a new ProductCode and the same UpgradeCode removes the older installed "
        "version (a major upgrade). The lab's packages refuse a downgrade, as packages that "
        "author one commonly do (1603, fatal error).",
        "https://learn.microsoft.com/windows/win32/msi/major-upgrades",
    ),
    Rule(
        "VERPATCH_SEPARATE",
        "verpatch.exe is not part of the NFON TAPI package: the admin downloads it separately "
        "and runs it beside Tools\\CreateInstance.bat to name an instance's provider.",
        "NFON Multiline TAPI manual (version 1, 08.2025), section on setting up TSP instances "
        "('Einrichten von TSP-Instanzen')",
    ),
    Rule(
        "PROVIDERS_LOAD_AT_START",
        "A provider registered while TAPI runs is not started; TapiSrv loads the registered "
        "providers, and the TSP its settings, when it starts.",
        "https://learn.microsoft.com/windows/win32/api/tapi/nf-tapi-lineaddprovider; "
        "https://wiki.innovaphone.com/index.php?title=Howto:Troubleshooting_the_TAPI_service_provider",
    ),
    Rule(
        "TSECIMP_SILENT",
        "tsecimp /f gives no error for a line device that is not available; NoMerge removes a "
        "user's lines first; no LineList removes all; Remove takes one line away.",
        "https://learn.microsoft.com/windows-server/administration/windows-commands/tsecimp",
    ),
    Rule(
        "FIREWALL_COM_SPELLING",
        "INetFwRule takes RemoteAddresses as a subnet in mask or prefix notation (no mask: "
        "255.255.255.255), ranges and keywords such as LocalSubnet (any case). It hands them back "
        "in one spelling: IPv4 with a dotted mask (10.0.2.0/255.255.255.0), keywords cased; that "
        "spelling is what hosts print, the page does not state it.",
        "https://learn.microsoft.com/windows/win32/api/netfw/nf-netfw-inetfwrule-get_remoteaddresses",
    ),
    Rule(
        "WEB_DOWNLOAD",
        "WebClient.DownloadFile throws WebException for an HTTP error ('The remote server "
        "returned an error: (404) Not Found.') or a name it cannot resolve ('The remote name "
        "could not be resolved').",
        "https://learn.microsoft.com/dotnet/api/system.net.webclient.downloadfile",
    ),
    Rule(
        "HANGING_TOOLS",
        "Console tools and service stops can hang (stopping the Telephony service 'often hangs' "
        "while a TSP is loaded); Process.WaitForExit(milliseconds) returns false when the time "
        "is up and the process keeps running until it is killed. WaitForExit(0) returns at once: "
        "false while the process still runs, which a just-started tool always does.",
        "https://learn.microsoft.com/dotnet/api/system.diagnostics.process.waitforexit; "
        "https://wiki.innovaphone.com/index.php?title=Howto:Troubleshooting_the_TAPI_service_provider",
    ),
    Rule(
        "CONSTRAINED_LANGUAGE",
        "In ConstrainedLanguage mode (an application control policy such as AppLocker or WDAC "
        "sets it) PowerShell invokes methods and sets properties only on core types: the "
        "bootstrap fails before any script runs, and powershell.exe writes the error to stderr "
        "and exits 1.",
        "https://learn.microsoft.com/dotnet/api/system.management.automation.pslanguagemode; "
        "https://learn.microsoft.com/powershell/module/microsoft.powershell.core/about/"
        "about_language_modes",
    ),
    Rule(
        "WINRM_DEFAULTS",
        "winrm/config's defaults: MaxEnvelopeSizekb 500, MaxConcurrentOperationsPerUser 1500, "
        "Shell MaxShellsPerUser 30 and MaxMemoryPerShellMB 1024; the WSMan: drive shows each "
        "(WSMan:\\localhost\\MaxEnvelopeSizekb, ...\\Shell\\MaxShellsPerUser, ...).",
        "https://learn.microsoft.com/windows/win32/winrm/"
        "installation-and-configuration-for-windows-remote-management; "
        "https://learn.microsoft.com/powershell/module/microsoft.wsman.management/about/"
        "about_wsman_provider",
    ),
    Rule(
        "FIREWALL_PROFILES",
        "A rule applies only in the profiles its Profiles mask names (1 Domain, 2 Private, 4 "
        "Public); INetFwPolicy2.CurrentProfileTypes gives the profiles active now, Domain (1) on "
        "a domain-joined server that reaches its domain controller.",
        "https://learn.microsoft.com/windows/win32/api/netfw/"
        "nf-netfw-inetfwpolicy2-get_currentprofiletypes; "
        "https://learn.microsoft.com/windows/win32/api/netfw/ne-netfw-net_fw_profile_type2",
    ),
    Rule(
        "CONCURRENT_COMMANDS",
        "A host runs the WinRM commands of several users and shells at once (up to "
        "MaxConcurrentUsers 10, MaxShellsPerUser 30 shells, MaxProcessesPerShell 25 processes per "
        "shell): each command is its own process, and nothing makes one command's work atomic "
        "with respect to another's. Two provisioners' commands on one host interleave.",
        "https://learn.microsoft.com/openspecs/windows_protocols/ms-wsmv/"
        "7ffb4acd-cf01-4fbe-9e48-7746f5001957 (WinrsType); "
        "https://learn.microsoft.com/windows/win32/winrm/quotas",
    ),
    Rule(
        "FILE_SHARING",
        "Opening a file checks its open handles: the open fails with a sharing violation "
        "(IOException, 'The process cannot access the file ... because it is being used by "
        "another process') when it asks for an access an open handle does not share, or shares "
        "less than an open handle uses. FileShare.None refuses every other open until the file "
        "is closed; FileShare.Read lets others read but not write. The check and the new handle "
        "are one step; a process that ends closes its handles.",
        "https://learn.microsoft.com/dotnet/api/system.io.fileshare; "
        "https://learn.microsoft.com/windows/win32/procthread/terminating-a-process; "
        "https://learn.microsoft.com/windows/win32/fileio/creating-and-opening-files; "
        "https://learn.microsoft.com/dotnet/api/system.io.file.open",
    ),
)

RULE_NAMES: frozenset[str] = frozenset(rule.name for rule in RULES)
