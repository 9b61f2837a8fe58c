# provisioner-contract: gather 2
# Reads everything the provisioner manages on this host in one pass and returns one HostFacts
# document (provisioner/remote/contract.py). Input: a GatherRequest, e.g.
#   {"contract": 2, "role": "server", "firewall_group": "NFON-TAPI-Provisioner",
#    "services": ["NFONCTIEngine"], "telephony_service": "TapiSrv", "package_name": "NFON TAPI",
#    "tsp_file": "NFONTSP.TSP", "instance_file_pattern": "NFONTSP_{instance}.TSP",
#    "instance_settings_key": "HKLM\\SOFTWARE\\NFON\\TAPI\\{instance}",
#    "verpatch_path": "C:\\ProgramData\\NFON-Provisioner\\Tools\\verpatch.exe",
#    "timeouts": {"msiexec": 900, "command": 120, "service": 120},
#    "rpc_ports": ["135", "445", "49152-65535"], "package_source": "",
#    "lock": {"owner": "alice@ws17 pid 4711", "ttl_seconds": 900, "replaces": null,
#             "release": false}}
# With "lock" (apply, rollout) it first takes the host's lock, or answers {"contract": 2,
# "locked": HOLDER} and reads nothing else. Nothing here changes the host, except that lock, the
# seal key (created on first use), and that "tsecimp /d" starts the Telephony service on demand,
# as any TAPI client does.
param($request)
$ErrorActionPreference = 'Stop'
$Timeouts = $request['timeouts']  # seconds per kind of native command (platform profile keys)

# --- assumptions: no public source states these; apply.ps1 agrees (tests check) ----------------
# GUESS: the Telephony server settings behind tapimgmt's "Enable telephony server" (MS-TRP
# documents the flags, not where TapiSrv keeps them).
$TelephonyServerKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Server'
$TelephonyServerDisabledValue = 'DisableSharing'      # DWORD, 0 = server mode on
$TelephonyAdministratorsValue = 'TapiAdministrators'  # REG_MULTI_SZ of DOMAIN\user
# GUESS: where tcmsetup keeps the remote-TAPI client's server list (the tcmsetup page on
# Microsoft Learn does not say).
$RemoteTapiClientKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\RemoteSP'
$RemoteTapiServerCountValue = 'NumServers'            # DWORD; servers in Server0..Server<N-1>
$RemoteTapiConnectionOrientedValue = 'ConnectionOrientedOnly'  # DWORD, 1 = tcmsetup /x
$RemoteTapiProviderFile = 'remotesp.tsp'
# GUESS: value names inside a TSP instance's settings key (NFON's manual does not name them).
$TspKAccountValue = 'KAccount'
$TspNumberFormatValue = 'NumberFormat'
$TspLineNameFormatValue = 'LineNameFormat'
$TspDebugLevelValue = 'DebugLevel'                    # DWORD
$TspPasswordSaltValue = 'PasswordFingerprintSalt'     # the password itself is never read
$TspPasswordHmacValue = 'PasswordFingerprintHmac'
# GUESS: no documented location field holds an international access code (TapiUnattendLocation
# on Microsoft Learn lists the fields); this one is closest.
$LocationInternationalValue = 'InternationalCarrierCode'

# --- where things are (documented: Microsoft's TAPI provider and dialing-location keys) --------
$ProvidersKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Providers'
$LocationsKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Locations'
$CountryListKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Country List'
$UninstallKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Uninstall'
$ServicesKey = 'HKLM\SYSTEM\CurrentControlSet\Services'
$CurrentVersionKey = 'HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion'
# What says a reboot is pending (as Microsoft's ComputerManagementDsc PendingReboot resource
# reads it): value name, or $null for "the key exists".
$PendingRebootChecks = @(
    @('Component Based Servicing', 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Component Based Servicing\RebootPending', $null),
    @('Windows Update', 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\WindowsUpdate\Auto Update\RebootRequired', $null),
    @('pending file renames', 'HKLM\SYSTEM\CurrentControlSet\Control\Session Manager', 'PendingFileRenameOperations')
)
$FirewallService = 'MpsSvc'
# Our own state: the lock file, the package cache, and fingerprints of secrets we set.
$StateDir = Join-Path $env:ProgramData 'NFON-Provisioner'
$LockPath = Join-Path $StateDir 'lock.json'
$PackageCache = Join-Path $StateDir 'packages'
$StateKey = 'HKLM\SOFTWARE\NFON-Provisioner'
$SealKeyContainer = 'NFON-Provisioner-Seal'
# Well-known SIDs (names are localised, SIDs are not).
$SystemSid = 'S-1-5-18'
$AdministratorsSid = 'S-1-5-32-544'
$TelephonyService = [string]$request['telephony_service']
# The built-in service accounts by every spelling, and the SIDs that may log on as a service by
# definition (LocalSystem, Local Service, Network Service: no right is granted to them).
$BuiltinAccountSids = @{
    'LocalSystem' = 'S-1-5-18'; '.\LocalSystem' = 'S-1-5-18'; 'NT AUTHORITY\SYSTEM' = 'S-1-5-18'
    'NT AUTHORITY\NetworkService' = 'S-1-5-20'; 'NT AUTHORITY\Network Service' = 'S-1-5-20'
    'NT AUTHORITY\LocalService' = 'S-1-5-19'; 'NT AUTHORITY\Local Service' = 'S-1-5-19'
}
$ServiceLogonByDefinition = @('S-1-5-18', 'S-1-5-19', 'S-1-5-20')

$System32 = Join-Path $env:windir 'System32'
if ([Environment]::Is64BitOperatingSystem -and -not [Environment]::Is64BitProcess) {
    # A 32-bit PowerShell would be redirected to SysWOW64 (Microsoft Learn, "File System
    # Redirector").
    $System32 = Join-Path $env:windir 'Sysnative'
}
$utf8 = New-Object Text.UTF8Encoding $false
$serializer = New-Object Web.Script.Serialization.JavaScriptSerializer
$serializer.MaxJsonLength = [int]::MaxValue
Add-Type -AssemblyName System.ServiceProcess

# The Local Security Authority's account rights, read-only (no cmdlet reads them).
$LsaSource = @'
using System;
using System.ComponentModel;
using System.Runtime.InteropServices;
public static class ProvisionerLsaReader {
    [StructLayout(LayoutKind.Sequential)]
    struct ObjectAttributes {
        public int Length; public IntPtr RootDirectory; public IntPtr ObjectName; public int Attributes;
        public IntPtr SecurityDescriptor; public IntPtr SecurityQualityOfService;
    }
    [StructLayout(LayoutKind.Sequential)]
    struct UnicodeString { public ushort Length; public ushort MaximumLength; public IntPtr Buffer; }
    [DllImport("advapi32.dll")]
    static extern uint LsaOpenPolicy(IntPtr system, ref ObjectAttributes attributes, int access, out IntPtr policy);
    [DllImport("advapi32.dll")]
    static extern uint LsaEnumerateAccountRights(IntPtr policy, byte[] sid, out IntPtr rights, out uint count);
    [DllImport("advapi32.dll")]
    static extern uint LsaFreeMemory(IntPtr buffer);
    [DllImport("advapi32.dll")]
    static extern uint LsaClose(IntPtr policy);
    [DllImport("advapi32.dll")]
    static extern int LsaNtStatusToWinError(uint status);
    const uint ObjectNameNotFound = 0xC0000034;  // the account holds no rights at all
    const int LookupNames = 0x800;

    public static bool HasRight(byte[] sid, string right) {
        var attributes = new ObjectAttributes();
        attributes.Length = Marshal.SizeOf(typeof(ObjectAttributes));
        IntPtr policy;
        uint status = LsaOpenPolicy(IntPtr.Zero, ref attributes, LookupNames, out policy);
        if (status != 0) { throw new Win32Exception(LsaNtStatusToWinError(status)); }
        try {
            IntPtr rights; uint count;
            status = LsaEnumerateAccountRights(policy, sid, out rights, out count);
            if (status == ObjectNameNotFound) { return false; }
            if (status != 0) { throw new Win32Exception(LsaNtStatusToWinError(status)); }
            try {
                int size = Marshal.SizeOf(typeof(UnicodeString));
                for (int index = 0; index < count; index++) {
                    var item = (UnicodeString)Marshal.PtrToStructure(new IntPtr(rights.ToInt64() + index * size), typeof(UnicodeString));
                    if (Marshal.PtrToStringUni(item.Buffer, item.Length / 2) == right) { return true; }
                }
                return false;
            } finally { LsaFreeMemory(rights); }
        } finally { LsaClose(policy); }
    }
}
'@

# --- helpers ----------------------------------------------------------------------------------

function Open-RegistryKey([string] $Path, [string] $View = 'Registry64') {
    # 'HKLM\SOFTWARE\...' (or 'HKLM:\', 'HKEY_LOCAL_MACHINE\') read-only in the given view;
    # $null when the key does not exist.
    $match = [regex]::Match($Path, '^(?i:HKLM:?|HKEY_LOCAL_MACHINE)\\+(.+?)\\*$')
    if (-not $match.Success) { throw "registry path '$Path' is not under HKLM" }
    $hive = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', $View)
    return $hive.OpenSubKey($match.Groups[1].Value)
}

function Get-RegistryValue($Key, [string] $Name, $Default) {
    if ($null -eq $Key) { return $Default }
    return $Key.GetValue($Name, $Default)
}

function ConvertTo-PlainData($Value) {
    # JavaScriptSerializer would serialise a PSObject's adapter: reduce everything to plain
    # dictionaries, lists, strings, numbers and booleans.
    if ($null -eq $Value) { return $null }
    if ($Value -is [Management.Automation.PSObject]) { $Value = $Value.PSObject.BaseObject }
    if ($Value -is [string] -or $Value -is [bool] -or $Value -is [int] -or $Value -is [long]) {
        return $Value
    }
    if ($Value -is [uint32] -or $Value -is [double] -or $Value -is [decimal]) { return $Value }
    if ($Value -is [Collections.IDictionary]) {
        $plain = New-Object 'Collections.Generic.Dictionary[string,object]'
        foreach ($name in $Value.Keys) { $plain[[string]$name] = ConvertTo-PlainData $Value[$name] }
        return $plain
    }
    if ($Value -is [Collections.IEnumerable]) {
        $list = New-Object Collections.ArrayList
        foreach ($item in $Value) { [void]$list.Add((ConvertTo-PlainData $item)) }
        return , $list
    }
    return [string]$Value
}

function Invoke-Native([string] $FilePath, [string] $Arguments) {
    # Runs a console program directly (no shell between us and it), for at most the request's
    # 'command' timeout; a program still running then is killed. Its output is decoded from the
    # OEM code page: GUESS, what Windows console tools write when redirected.
    $seconds = [int]$Timeouts['command']
    $info = New-Object Diagnostics.ProcessStartInfo
    $info.FileName = $FilePath
    $info.Arguments = $Arguments
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $oem = [Text.Encoding]::GetEncoding([Globalization.CultureInfo]::CurrentCulture.TextInfo.OEMCodePage)
    $info.StandardOutputEncoding = $oem
    $info.StandardErrorEncoding = $oem
    $process = [Diagnostics.Process]::Start($info)
    $stderr = $process.StandardError.ReadToEndAsync()
    $stdout = $process.StandardOutput.ReadToEndAsync()
    if (-not $process.WaitForExit($seconds * 1000)) {
        try { $process.Kill() } catch { }
        throw ('{0} did not finish within {1} s and was stopped: raise the platform profile key command_timeout_seconds (platform: in the TapiServer or Site manifest)' -f [IO.Path]::GetFileName($FilePath), $seconds)
    }
    $process.WaitForExit()  # the redirected streams are complete only now
    return @{ exit_code = $process.ExitCode; stdout = $stdout.Result; stderr = $stderr.Result }
}

function Get-AccountSid([string] $Account) {
    # A built-in account by its well-known SID, any other through the domain or the local SAM;
    # $null for a name that does not translate.
    $builtin = $BuiltinAccountSids[$Account.Trim()]
    if ($builtin) { return $builtin }
    $name = $Account.Trim()
    if ($name.StartsWith('.\')) { $name = $env:COMPUTERNAME + $name.Substring(1) }
    try { return [string](New-Object Security.Principal.NTAccount $name).Translate([Security.Principal.SecurityIdentifier]).Value }
    catch { return $null }
}

function Test-LogonRight($Sid) {
    # Whether the SID holds 'Log on as a service' itself (a right held only through a group
    # is not seen here); $null when there is no SID to ask about.
    if ($null -eq $Sid) { return $null }
    if ($ServiceLogonByDefinition -contains $Sid) { return $true }
    if (-not ('ProvisionerLsaReader' -as [type])) { Add-Type -TypeDefinition $LsaSource }
    $identity = New-Object Security.Principal.SecurityIdentifier $Sid
    $bytes = New-Object byte[] $identity.BinaryLength
    $identity.GetBinaryForm($bytes, 0)
    return [ProvisionerLsaReader]::HasRight($bytes, 'SeServiceLogonRight')
}

function Get-ServiceFacts([string] $Name, $Controllers) {
    # State from the service controller, start mode and account from the service's key.
    $controller = $Controllers[$Name]
    if ($null -eq $controller) { return $null }
    $key = Open-RegistryKey "$ServicesKey\$($controller.ServiceName)"
    $start = [int](Get-RegistryValue $key 'Start' 3)
    $delayed = [int](Get-RegistryValue $key 'DelayedAutostart' 0)
    $mode = switch ($start) {
        4 { 'disabled' }
        3 { 'manual' }
        default { if ($delayed -eq 1) { 'delayed-auto' } else { 'auto' } }
    }
    $running = @('Running', 'StartPending', 'ContinuePending') -contains [string]$controller.Status
    $account = [string](Get-RegistryValue $key 'ObjectName' '')
    $sid = Get-AccountSid $account
    return @{
        name = [string]$controller.ServiceName
        state = $(if ($running) { 'running' } else { 'stopped' })
        start_mode = $mode
        account = $account
        account_sid = $sid
        logon_right = (Test-LogonRight $sid)
    }
}

function Get-KeyAclFacts($Key) {
    # The rules that apply to the key itself, by SID (names are localised); inherit-only rules
    # apply to subkeys only and are left out.
    $security = $Key.GetAccessControl('Access')
    $entries = New-Object Collections.ArrayList
    foreach ($rule in $security.GetAccessRules($true, $true, [Security.Principal.SecurityIdentifier])) {
        if (($rule.PropagationFlags -band [Security.AccessControl.PropagationFlags]::InheritOnly) -ne 0) { continue }
        $name = ''
        try { $name = [string]$rule.IdentityReference.Translate([Security.Principal.NTAccount]).Value } catch { }
        $rights = [long][int]$rule.RegistryRights
        if ($rights -lt 0) { $rights += 4294967296 }  # GenericRead is the sign bit
        [void]$entries.Add(@{
                sid = [string]$rule.IdentityReference.Value
                name = $name
                rights = $rights
                allow = ([string]$rule.AccessControlType -eq 'Allow')
            })
    }
    return @{ protected = [bool]$security.AreAccessRulesProtected; entries = $entries }
}

function Get-Fingerprint($Key, [string] $SaltValue, [string] $HmacValue) {
    $salt = Get-RegistryValue $Key $SaltValue $null
    $hmac = Get-RegistryValue $Key $HmacValue $null
    if ($null -eq $salt -or $null -eq $hmac) { return $null }
    return @{ salt = [string]$salt; hmac = [string]$hmac }
}

function Get-SealKey {
    # An RSA key pair in a machine key container: created on first use, never exported whole.
    $parameters = New-Object Security.Cryptography.CspParameters
    $parameters.KeyContainerName = $SealKeyContainer
    $parameters.Flags = [Security.Cryptography.CspProviderFlags]::UseMachineKeyStore
    $rsa = New-Object Security.Cryptography.RSACryptoServiceProvider -ArgumentList 2048, $parameters
    $rsa.PersistKeyInCsp = $true
    $public = $rsa.ExportParameters($false)
    $rsa.Dispose()
    return @{
        modulus = [Convert]::ToBase64String($public.Modulus)
        exponent = [Convert]::ToBase64String($public.Exponent)
    }
}

function Get-TelephonyFacts($Controllers) {
    $service = Get-ServiceFacts $TelephonyService $Controllers
    if ($null -eq $service) { return $null }
    $server = Open-RegistryKey $TelephonyServerKey
    $administrators = New-Object Collections.ArrayList
    foreach ($name in @(Get-RegistryValue $server $TelephonyAdministratorsValue @())) {
        if ($name) { [void]$administrators.Add([string]$name) }
    }
    $account = Open-RegistryKey "$StateKey\Services\$TelephonyService"
    return @{
        service = $service
        server_mode = ([int](Get-RegistryValue $server $TelephonyServerDisabledValue 1) -eq 0)
        administrators = $administrators
        account_password = (Get-Fingerprint $account 'PasswordSalt' 'PasswordHmac')
    }
}

function Get-PackageFacts([string] $Name) {
    # Windows Installer products from the Uninstall keys of both registry views (Win32_Product
    # would run a consistency check of every product).
    $packages = New-Object Collections.ArrayList
    if (-not $Name) { return , $packages }
    $seen = @{}
    foreach ($view in 'Registry64', 'Registry32') {
        $root = Open-RegistryKey $UninstallKey $view
        if ($null -eq $root) { continue }
        foreach ($code in $root.GetSubKeyNames()) {
            $key = $root.OpenSubKey($code)
            if ($null -eq $key -or $seen.ContainsKey($code)) { continue }
            if ([int]$key.GetValue('WindowsInstaller', 0) -ne 1) { continue }
            if (-not [string]::Equals([string]$key.GetValue('DisplayName', ''), $Name, 'OrdinalIgnoreCase')) { continue }
            $seen[$code] = $true
            [void]$packages.Add(@{
                    product_code = $code
                    name = [string]$key.GetValue('DisplayName', '')
                    version = [string]$key.GetValue('DisplayVersion', '')
                })
        }
    }
    return , $packages
}

function Get-ProviderFacts {
    # The registry form of lineGetProviderList (64-bit view); the display name is the .tsp
    # file's FileDescription, which NFON's CreateInstance.bat sets with verpatch.
    $providers = New-Object Collections.ArrayList
    $key = Open-RegistryKey $ProvidersKey
    $count = [int](Get-RegistryValue $key 'NumProviders' 0)
    for ($index = 0; $index -lt $count; $index++) {
        $file = [string](Get-RegistryValue $key "ProviderFileName$index" '')
        if (-not $file) { continue }
        $path = Join-Path $System32 $file
        $description = ''
        if ([IO.File]::Exists($path)) {
            $description = [string][Diagnostics.FileVersionInfo]::GetVersionInfo($path).FileDescription
        }
        [void]$providers.Add(@{
                id = [long](Get-RegistryValue $key "ProviderID$index" 0)
                file = $file
                name = $description
            })
    }
    return , $providers
}

function Get-TspInstanceFacts([string] $FilePattern, [string] $SettingsKey) {
    # Instances are found by their copied .tsp files in System32 and by their settings keys
    # (when {instance} is the last part of the key path, its parent lists them all).
    $instances = New-Object Collections.ArrayList
    if (-not $FilePattern) { return , $instances }
    $fileRegex = '^(?i)' + [regex]::Escape($FilePattern).Replace('\{instance}', '(?<instance>.+)') + '$'
    $names = New-Object 'Collections.Generic.SortedSet[string]' ([StringComparer]::OrdinalIgnoreCase)
    foreach ($path in [IO.Directory]::GetFiles($System32, '*.tsp')) {
        $match = [regex]::Match([IO.Path]::GetFileName($path), $fileRegex)
        if ($match.Success) { [void]$names.Add($match.Groups['instance'].Value) }
    }
    if ($SettingsKey -match '^(?<parent>.+)\\\{instance\}\\*$') {
        $parent = Open-RegistryKey $Matches['parent']
        if ($null -ne $parent) { foreach ($name in $parent.GetSubKeyNames()) { [void]$names.Add($name) } }
    }
    foreach ($instance in $names) {
        $file = $FilePattern.Replace('{instance}', $instance)
        $settings = $null
        $acl = $null
        if ($SettingsKey) {
            $key = Open-RegistryKey $SettingsKey.Replace('{instance}', $instance)
            if ($null -ne $key) {
                $acl = Get-KeyAclFacts $key
                $settings = @{
                    k_account = [string](Get-RegistryValue $key $TspKAccountValue '')
                    number_format = [string](Get-RegistryValue $key $TspNumberFormatValue '')
                    line_name_format = [string](Get-RegistryValue $key $TspLineNameFormatValue '')
                    debug_level = [int](Get-RegistryValue $key $TspDebugLevelValue 0)
                    password = (Get-Fingerprint $key $TspPasswordSaltValue $TspPasswordHmacValue)
                }
            }
        }
        [void]$instances.Add(@{
                instance = $instance
                file = $file
                file_present = [IO.File]::Exists((Join-Path $System32 $file))
                settings = $settings
                settings_acl = $acl
            })
    }
    return , $instances
}

function Get-LocationFacts {
    # Location<N> keys; Country is a Country List id, whose CountryCode is the dialing code.
    $locations = New-Object Collections.ArrayList
    $root = Open-RegistryKey $LocationsKey
    if ($null -eq $root) { return , $locations }
    $countries = Open-RegistryKey $CountryListKey
    $current = [int](Get-RegistryValue $root 'CurrentID' 0)
    foreach ($name in $root.GetSubKeyNames()) {
        if ($name -notmatch '^(?i)Location\d+$') { continue }
        $key = $root.OpenSubKey($name)
        $id = [int](Get-RegistryValue $key 'ID' 0)
        $country = [int](Get-RegistryValue $key 'Country' 0)
        $countryKey = $null
        if ($null -ne $countries) { $countryKey = $countries.OpenSubKey([string]$country) }
        [void]$locations.Add(@{
                id = $id
                name = [string](Get-RegistryValue $key 'Name' '')
                country_code = [int](Get-RegistryValue $countryKey 'CountryCode' $country)
                area_code = [string](Get-RegistryValue $key 'AreaCode' '')
                outside_access = [string](Get-RegistryValue $key 'OutsideAccess' '')
                long_distance_access = [string](Get-RegistryValue $key 'LongDistanceAccess' '')
                international_access = [string](Get-RegistryValue $key $LocationInternationalValue '')
                current = ($id -eq $current)
            })
    }
    return , $locations
}

function ConvertTo-FirewallRuleFacts($Rule) {
    return @{
        name = [string]$Rule.Name
        display_name = [string]$Rule.Name  # COM has one name: the display name
        description = [string]$Rule.Description
        group = [string]$Rule.Grouping
        direction = [int]$Rule.Direction
        action = [int]$Rule.Action
        protocol = [int]$Rule.Protocol
        local_ports = $(if ($Rule.LocalPorts) { [string]$Rule.LocalPorts } else { '*' })
        remote_ports = $(if ($Rule.RemotePorts) { [string]$Rule.RemotePorts } else { '*' })
        local_addresses = $(if ($Rule.LocalAddresses) { [string]$Rule.LocalAddresses } else { '*' })
        remote_addresses = $(if ($Rule.RemoteAddresses) { [string]$Rule.RemoteAddresses } else { '*' })
        profiles = [int]$Rule.Profiles
        enabled = [bool]$Rule.Enabled
        application = [string]$Rule.ApplicationName
        service = [string]$Rule.serviceName
    }
}

function Test-PortsReach([string] $Ports, $Wanted) {
    # Whether LocalPorts ("135,5000-5010", "RPC", "*") reach a wanted port or range ("135",
    # "49152-65535"). The keywords RPC (dynamic RPC ports) and RPC-EPMap (135) reach TapiSrv.
    if (-not $Ports -or $Ports -eq '*') { return $true }
    foreach ($part in $Ports.Split(',')) {
        $part = $part.Trim()
        if ($part -eq 'RPC' -or $part -eq 'RPC-EPMap') { return $true }
        $ends = $part.Split('-')
        if ($ends[0] -notmatch '^\d+$' -or $ends[-1] -notmatch '^\d+$') { continue }
        foreach ($range in $Wanted) {
            $limits = ([string]$range).Split('-')
            if ([int]$ends[0] -le [int]$limits[-1] -and [int]$ends[-1] -ge [int]$limits[0]) { return $true }
        }
    }
    return $false
}

function Test-OpensRpc($Rule, [int] $ActiveProfiles, $RpcPorts) {
    # An enabled inbound allow rule (any group) for TCP or any protocol, in a profile active now,
    # not limited to another program than svchost or System, nor to another service.
    if (-not $Rule.Enabled -or [int]$Rule.Direction -ne 1 -or [int]$Rule.Action -ne 1) { return $false }
    if (@(6, 256) -notcontains [int]$Rule.Protocol) { return $false }
    if (([int]$Rule.Profiles -band $ActiveProfiles) -eq 0) { return $false }
    $application = [string]$Rule.ApplicationName
    if ($application -and $application -ne 'System' -and -not $application.EndsWith('\svchost.exe', 'OrdinalIgnoreCase')) { return $false }
    $service = [string]$Rule.serviceName
    if ($service -and @('*', $TelephonyService, 'RpcSs') -notcontains $service) { return $false }
    return (Test-PortsReach ([string]$Rule.LocalPorts) $RpcPorts)
}

function Get-FirewallRules([string] $Group, $RpcPorts) {
    # One pass over HNetCfg.FwPolicy2 (Get-NetFirewallRule is several times slower): the rules
    # of the managed group, and the rules of any group that open TapiSrv's RPC ports.
    $managed = New-Object Collections.ArrayList
    $openRpc = New-Object Collections.ArrayList
    $policy = New-Object -ComObject HNetCfg.FwPolicy2
    $active = [int]$policy.CurrentProfileTypes
    foreach ($rule in $policy.Rules) {
        if ([string]::Equals([string]$rule.Grouping, $Group, 'Ordinal')) {
            [void]$managed.Add((ConvertTo-FirewallRuleFacts $rule))
        }
        if (Test-OpensRpc $rule $active $RpcPorts) { [void]$openRpc.Add((ConvertTo-FirewallRuleFacts $rule)) }
    }
    return @{ managed = $managed; open_rpc = $openRpc }
}

function Get-WSManValue([string] $Path) {
    # One winrm/config value from the WSMan: drive (Microsoft Learn, about_WSMan_Provider);
    # $null where it cannot be read (the drive needs the WinRM user to be an administrator).
    try {
        if (-not (Get-PSDrive -Name WSMan -ErrorAction SilentlyContinue)) { Import-Module Microsoft.WSMan.Management }
        return [long](Get-Item -LiteralPath $Path).Value
    } catch { return $null }
}

function Get-WinRMConfigFacts {
    return @{
        max_envelope_size_kb = (Get-WSManValue 'WSMan:\localhost\MaxEnvelopeSizekb')
        max_shells_per_user = (Get-WSManValue 'WSMan:\localhost\Shell\MaxShellsPerUser')
        max_concurrent_operations_per_user = (Get-WSManValue 'WSMan:\localhost\Service\MaxConcurrentOperationsPerUser')
        max_memory_per_shell_mb = (Get-WSManValue 'WSMan:\localhost\Shell\MaxMemoryPerShellMB')
    }
}

function Test-PackageSource([string] $Source) {
    # Whether this session reads a UNC package source, as the apply's session would have to:
    # without the operator's credentials (the second hop). $null when none was asked about.
    if (-not $Source) { return $null }
    try { [IO.File]::OpenRead($Source).Dispose(); return $true } catch { return $false }
}

function Get-SystemFacts($Controllers) {
    # Windows from the registry (its 10.0 build numbers do not depend on an application
    # manifest, as [Environment]::OSVersion does), the session's own token and language mode.
    $current = Open-RegistryKey $CurrentVersionKey
    $major = Get-RegistryValue $current 'CurrentMajorVersionNumber' $null
    $version = [Environment]::OSVersion.Version.ToString()
    if ($null -ne $major) {
        $version = '{0}.{1}.{2}' -f $major, (Get-RegistryValue $current 'CurrentMinorVersionNumber' 0), (Get-RegistryValue $current 'CurrentBuildNumber' 0)
    }
    $pending = New-Object Collections.ArrayList
    foreach ($check in $PendingRebootChecks) {
        $key = Open-RegistryKey $check[1]
        if ($null -eq $key) { continue }
        if ($null -eq $check[2] -or $null -ne $key.GetValue($check[2], $null)) { [void]$pending.Add($check[0]) }
    }
    $principal = New-Object Security.Principal.WindowsPrincipal ([Security.Principal.WindowsIdentity]::GetCurrent())
    $drive = New-Object IO.DriveInfo ([IO.Path]::GetPathRoot($env:windir))
    $firewall = $Controllers[$FirewallService]
    return @{
        windows_version = $version
        windows_product = [string](Get-RegistryValue $current 'ProductName' '')
        powershell_version = $PSVersionTable.PSVersion.ToString()
        language_mode = [string]$ExecutionContext.SessionState.LanguageMode
        elevated = $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)
        pending_reboot = $pending
        system_drive_free_bytes = [long]$drive.AvailableFreeSpace
        firewall_service_running = ($null -ne $firewall -and [string]$firewall.Status -eq 'Running')
    }
}

function Get-ToolFacts([string] $VerpatchPath) {
    $verpatch = $false
    if ($VerpatchPath) { $verpatch = [IO.File]::Exists([Environment]::ExpandEnvironmentVariables($VerpatchPath)) }
    return @{
        tsecimp = [IO.File]::Exists((Join-Path $System32 'tsecimp.exe'))
        tcmsetup = [IO.File]::Exists((Join-Path $System32 'tcmsetup.exe'))
        verpatch = $verpatch
    }
}

function Get-PackageCache {
    # The sha256 of each package the upload script or an apply left in the cache.
    $held = New-Object Collections.ArrayList
    if (-not [IO.Directory]::Exists($PackageCache)) { return , $held }
    foreach ($path in [IO.Directory]::GetFiles($PackageCache, '*.msi')) {
        $name = [IO.Path]::GetFileNameWithoutExtension($path)
        if ($name -cmatch '^[0-9a-f]{64}$') { [void]$held.Add($name) }
    }
    return , $held
}

function Get-TsecimpListing {
    $tsecimp = Join-Path $System32 'tsecimp.exe'
    if (-not [IO.File]::Exists($tsecimp)) { return $null }
    return [string](Invoke-Native $tsecimp '/d')['stdout']
}

function Get-TapiClientFacts($Providers) {
    $enabled = $false
    foreach ($provider in $Providers) {
        if ([string]::Equals($provider['file'], $RemoteTapiProviderFile, 'OrdinalIgnoreCase')) { $enabled = $true }
    }
    $key = Open-RegistryKey $RemoteTapiClientKey
    $servers = New-Object Collections.ArrayList
    $count = [int](Get-RegistryValue $key $RemoteTapiServerCountValue 0)
    for ($index = 0; $index -lt $count; $index++) {
        $server = [string](Get-RegistryValue $key "Server$index" '')
        if ($server) { [void]$servers.Add($server) }
    }
    return @{
        enabled = $enabled
        servers = $servers
        connection_oriented = ([int](Get-RegistryValue $key $RemoteTapiConnectionOrientedValue 0) -eq 1)
    }
}

# provisioner-include: private_directory.ps1
# provisioner-include: host_lock.ps1

# --- one pass ---------------------------------------------------------------------------------

$entered = $null
if ($null -ne $request['lock']) {
    $entered = Enter-Lock $request['lock'] $true
    if (-not $entered['taken']) { return (ConvertTo-PlainData @{ contract = 2; locked = $entered['lock'] }) }
}
try {
    $controllers = @{}  # case-insensitive, like service names
    foreach ($controller in [ServiceProcess.ServiceController]::GetServices()) {
        $controllers[$controller.ServiceName] = $controller
    }
    $role = [string]$request['role']
    $providers = Get-ProviderFacts
    $firewall = Get-FirewallRules ([string]$request['firewall_group']) @($request['rpc_ports'])
    $facts = @{
        contract = 2
        computer_name = [string]$env:COMPUTERNAME
        role = $role
        seal_key = (Get-SealKey)
        lock = $(if ($null -ne $entered) { $entered['lock'] } else { Get-LockHolder })
        firewall_rules = $firewall['managed']
        open_rpc_rules = $firewall['open_rpc']
        services = New-Object Collections.ArrayList
        system = (Get-SystemFacts $controllers)
        tools = (Get-ToolFacts ([string]$request['verpatch_path']))
        package_cache = (Get-PackageCache)
        winrm = (Get-WinRMConfigFacts)
        package_source_readable = (Test-PackageSource ([string]$request['package_source']))
    }
    foreach ($name in @($request['services'])) {
        if ($null -eq $name) { continue }
        $service = Get-ServiceFacts ([string]$name) $controllers
        if ($null -ne $service) { [void]$facts['services'].Add($service) }
    }
    if ($role -eq 'server') {
        $facts['telephony'] = Get-TelephonyFacts $controllers
        $facts['packages'] = Get-PackageFacts ([string]$request['package_name'])
        $facts['providers'] = $providers
        $facts['tsp_instances'] = Get-TspInstanceFacts ([string]$request['instance_file_pattern']) ([string]$request['instance_settings_key'])
        $facts['locations'] = Get-LocationFacts
        $facts['tsecimp_listing'] = Get-TsecimpListing
    } else {
        $facts['tapi_client'] = Get-TapiClientFacts $providers
    }
    return (ConvertTo-PlainData $facts)
} finally { if ($null -ne $entered) { Exit-Lock $entered $request['lock'] } }
