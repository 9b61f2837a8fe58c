# provisioner-contract: apply 2
# Renews the host's lock (taken by the gather the plan was made from), performs the operations of
# an ApplyRequest in order, stops at the first failure, renews or gives back the lock and returns
# one ApplyResponse (provisioner/remote/contract.py). Input, e.g.:
#   {"contract": 2, "lock": {"owner": "alice@ws17 pid 4711", "ttl_seconds": 900,
#                            "replaces": null, "release": false},
#    "timeouts": {"msiexec": 900, "command": 120, "service": 120},
#    "steps": [{"id": "firewall/nfon-tapi-in-smb",
#               "operation": {"op": "firewall.remove", "name": "nfon-tapi-in-smb"}}]}
# Every value arrives as data in the parsed JSON; none is ever pasted into code.
param($request)
$ErrorActionPreference = 'Stop'
$Timeouts = $request['timeouts']  # seconds per kind of native command (platform profile keys)

# --- assumptions: no public source states these; gather.ps1 agrees (tests check) ---------------
# GUESS: the Telephony server settings behind tapimgmt's "Enable telephony server" (MS-TRP
# documents the flags, not where TapiSrv keeps them).
$TelephonyServerKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Server'
$TelephonyServerDisabledValue = 'DisableSharing'      # DWORD, 0 = server mode on
$TelephonyAdministratorsValue = 'TapiAdministrators'  # REG_MULTI_SZ of DOMAIN\user
# GUESS: value names inside a TSP instance's settings key (NFON's manual does not name them); the
# TSP reads the
# password from there (whether NFON encrypts it is unknown).
$TspKAccountValue = 'KAccount'
$TspNumberFormatValue = 'NumberFormat'
$TspLineNameFormatValue = 'LineNameFormat'
$TspDebugLevelValue = 'DebugLevel'                    # DWORD
$TspPasswordValue = 'Password'
$TspPasswordSaltValue = 'PasswordFingerprintSalt'
$TspPasswordHmacValue = 'PasswordFingerprintHmac'
# GUESS: no documented location field holds an international access code (TapiUnattendLocation
# on Microsoft Learn lists the fields); this one is closest.
$LocationInternationalValue = 'InternationalCarrierCode'

# --- where things are (documented: Microsoft's TAPI provider and dialing-location keys) --------
$ProvidersKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Providers'
$LocationsKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Locations'
$CountryListKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Country List'
$StateDir = Join-Path $env:ProgramData 'NFON-Provisioner'
$LockPath = Join-Path $StateDir 'lock.json'
$PackageCache = Join-Path $StateDir 'packages'
$StateKey = 'HKLM\SOFTWARE\NFON-Provisioner'
$SealKeyContainer = 'NFON-Provisioner-Seal'
# Well-known SIDs (names are localised, SIDs are not).
$SystemSid = 'S-1-5-18'
$AdministratorsSid = 'S-1-5-32-544'
# The built-in service accounts, which have no password and need no logon right: every
# spelling Win32_Service.Change or the service database uses.
$BuiltinAccountSids = @{
    'LocalSystem' = 'S-1-5-18'; '.\LocalSystem' = 'S-1-5-18'; 'NT AUTHORITY\SYSTEM' = 'S-1-5-18'
    'NT AUTHORITY\NetworkService' = 'S-1-5-20'; 'NT AUTHORITY\Network Service' = 'S-1-5-20'
    'NT AUTHORITY\LocalService' = 'S-1-5-19'; 'NT AUTHORITY\Local Service' = 'S-1-5-19'
}

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

# The Local Security Authority's account rights (no cmdlet reads or grants them), as the DSC
# service resources do it: LsaAddAccountRights grants, LsaEnumerateAccountRights reads.
$LsaSource = @'
using System;
using System.ComponentModel;
using System.Runtime.InteropServices;
public static class ProvisionerLsa {
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
    static extern uint LsaAddAccountRights(IntPtr policy, byte[] sid, UnicodeString[] rights, uint count);
    [DllImport("advapi32.dll")]
    static extern uint LsaFreeMemory(IntPtr buffer);
    [DllImport("advapi32.dll")]
    static extern uint LsaClose(IntPtr policy);
    [DllImport("advapi32.dll")]
    static extern int LsaNtStatusToWinError(uint status);
    const uint ObjectNameNotFound = 0xC0000034;  // the account holds no rights at all
    const int LookupNames = 0x800, CreateAccount = 0x10;

    static IntPtr Open(int access) {
        var attributes = new ObjectAttributes();
        attributes.Length = Marshal.SizeOf(typeof(ObjectAttributes));
        IntPtr policy;
        uint status = LsaOpenPolicy(IntPtr.Zero, ref attributes, access, out policy);
        if (status != 0) { throw new Win32Exception(LsaNtStatusToWinError(status)); }
        return policy;
    }

    public static bool HasRight(byte[] sid, string right) {
        IntPtr policy = Open(LookupNames);
        try {
            IntPtr rights; uint count;
            uint status = LsaEnumerateAccountRights(policy, sid, out rights, out count);
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

    public static void AddRight(byte[] sid, string right) {
        IntPtr policy = Open(LookupNames | CreateAccount);
        var item = new UnicodeString();
        item.Buffer = Marshal.StringToHGlobalUni(right);
        item.Length = (ushort)(right.Length * 2);
        item.MaximumLength = (ushort)((right.Length + 1) * 2);
        try {
            uint status = LsaAddAccountRights(policy, sid, new UnicodeString[] { item }, 1);
            if (status != 0) { throw new Win32Exception(LsaNtStatusToWinError(status)); }
        } finally { Marshal.FreeHGlobal(item.Buffer); LsaClose(policy); }
    }
}
'@

# lineAddProvider/lineRemoveProvider keep the provider list consistent and call the TSP's hooks.
$TapiSource = @'
using System;
using System.Runtime.InteropServices;
public static class ProvisionerTapi {
    [DllImport("tapi32.dll", CharSet = CharSet.Unicode, EntryPoint = "lineAddProviderW")]
    public static extern int LineAddProvider(string fileName, IntPtr owner, out uint providerId);
    [DllImport("tapi32.dll", EntryPoint = "lineRemoveProvider")]
    public static extern int LineRemoveProvider(uint providerId, IntPtr owner);
}
'@

# --- helpers ----------------------------------------------------------------------------------

function Get-RegistrySubKey([string] $Path) {
    # 'HKLM\SOFTWARE\X' (or 'HKLM:\', 'HKEY_LOCAL_MACHINE\') -> 'SOFTWARE\X'.
    $match = [regex]::Match($Path, '^(?i:HKLM:?|HKEY_LOCAL_MACHINE)\\+(.+?)\\*$')
    if (-not $match.Success) { throw "registry path '$Path' is not under HKLM" }
    return $match.Groups[1].Value
}

function Open-RegistryKey([string] $Path, [switch] $Write, $Security = $null) {
    # Always the 64-bit view; with -Write the key is created when missing (with $Security, which
    # an existing key is given too), else $null if absent.
    $hive = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', 'Registry64')
    $subKey = Get-RegistrySubKey $Path
    if (-not $Write) { return $hive.OpenSubKey($subKey) }
    if ($null -eq $Security) { return $hive.CreateSubKey($subKey) }
    $rights = [Security.AccessControl.RegistryRights]'ReadKey, WriteKey, ChangePermissions'
    $key = $hive.OpenSubKey($subKey, [Microsoft.Win32.RegistryKeyPermissionCheck]::ReadWriteSubTree, $rights)
    if ($null -eq $key) { return $hive.CreateSubKey($subKey, [Microsoft.Win32.RegistryKeyPermissionCheck]::ReadWriteSubTree, $Security) }
    $key.SetAccessControl($Security)
    return $key
}

function Remove-RegistryKey([string] $Path) {
    $hive = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', 'Registry64')
    $hive.DeleteSubKeyTree((Get-RegistrySubKey $Path), $false)
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

function Get-Field($Map, [string] $Name) {
    # A missing key reads as $null (a generic Dictionary's indexer would throw).
    if ($null -ne $Map -and $Map.ContainsKey($Name)) { return $Map[$Name] }
    return $null
}

function ConvertTo-Argument([string] $Value) {
    # Quotes one argument so that CommandLineToArgvW (the C runtime) splits it back unchanged.
    if ($Value -ne '' -and $Value -notmatch '[\s"]') { return $Value }
    $doubleBeforeQuote = [Text.RegularExpressions.MatchEvaluator] { param($m) ($m.Groups[1].Value * 2) + '\"' }
    $doubleAtEnd = [Text.RegularExpressions.MatchEvaluator] { param($m) $m.Groups[1].Value * 2 }
    $escaped = [regex]::Replace($Value, '(\\*)"', $doubleBeforeQuote)
    $escaped = [regex]::Replace($escaped, '(\\+)$', $doubleAtEnd)
    return '"' + $escaped + '"'
}

function Join-Arguments([string[]] $List) {
    return (@($List | ForEach-Object { ConvertTo-Argument $_ }) -join ' ')
}

function Invoke-Native([string] $FilePath, [string] $Arguments, [string] $Kind) {
    # Runs a program directly (no shell between us and it), for at most the request's timeout of
    # its kind ('msiexec' or 'command'); a program still running then is killed. Its output is
    # decoded from the OEM code page: GUESS, what Windows console tools write when redirected.
    $seconds = [int]$Timeouts[$Kind]
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
        throw (Format-Timeout ([IO.Path]::GetFileName($FilePath)) $seconds $Kind)
    }
    $process.WaitForExit()  # the redirected streams are complete only now
    return @{ exit_code = $process.ExitCode; stdout = $stdout.Result; stderr = $stderr.Result }
}

function Format-Timeout([string] $What, [int] $Seconds, [string] $Kind) {
    $key = @{ msiexec = 'msiexec_timeout_seconds'; command = 'command_timeout_seconds'; service = 'service_timeout_seconds' }[$Kind]
    return ('{0} did not finish within {1} s and was stopped: raise the platform profile key {2} (platform: in the TapiServer or Site manifest)' -f $What, $Seconds, $key)
}

function Assert-Match([string] $Value, [string] $Pattern, [string] $What) {
    if ($Value -cnotmatch $Pattern) { throw "$What '$Value' is not valid" }
}

# --- accounts ---------------------------------------------------------------------------------

function Resolve-AccountSid([string] $Account) {
    # A built-in account by its well-known SID, any other through the domain or the local SAM;
    # a name that does not translate is an error that names it.
    $builtin = $BuiltinAccountSids[$Account.Trim()]
    if ($builtin) { return (New-Object Security.Principal.SecurityIdentifier $builtin) }
    if ($Account -match '^S-1-[0-9-]+$') { return (New-Object Security.Principal.SecurityIdentifier $Account) }
    $name = $Account.Trim()
    if ($name.StartsWith('.\')) { $name = $env:COMPUTERNAME + $name.Substring(1) }
    try {
        return (New-Object Security.Principal.NTAccount $name).Translate([Security.Principal.SecurityIdentifier])
    } catch {
        throw "the account '$Account' does not exist here (it does not translate to a SID): check the account's name and domain"
    }
}

function Get-SidBytes($Sid) {
    $bytes = New-Object byte[] $Sid.BinaryLength
    $Sid.GetBinaryForm($bytes, 0)
    return , $bytes
}

function Grant-LogonRight([string] $Account) {
    # 'Log on as a service' (SeServiceLogonRight): Win32_Service.Change does not grant it, and a
    # service whose account lacks it does not start (1069). Built-in accounts need none.
    if ($BuiltinAccountSids[$Account.Trim()]) { return 'not needed' }
    $bytes = Get-SidBytes (Resolve-AccountSid $Account)
    if (-not ('ProvisionerLsa' -as [type])) { Add-Type -TypeDefinition $LsaSource }
    if ([ProvisionerLsa]::HasRight($bytes, 'SeServiceLogonRight')) { return 'held' }
    [ProvisionerLsa]::AddRight($bytes, 'SeServiceLogonRight')
    return 'granted'
}

# --- sealed secrets ---------------------------------------------------------------------------

function Get-SealKey {
    $parameters = New-Object Security.Cryptography.CspParameters
    $parameters.KeyContainerName = $SealKeyContainer
    $parameters.Flags = [Security.Cryptography.CspProviderFlags]::UseMachineKeyStore
    $rsa = New-Object Security.Cryptography.RSACryptoServiceProvider -ArgumentList 2048, $parameters
    $rsa.PersistKeyInCsp = $true
    return $rsa
}

function ConvertFrom-Hex([string] $Hex) {
    if ($Hex.Length % 2 -ne 0 -or $Hex -notmatch '^[0-9a-fA-F]+$') { throw 'a fingerprint salt is not hex' }
    $bytes = New-Object byte[] ($Hex.Length / 2)
    for ($index = 0; $index -lt $bytes.Length; $index++) {
        $bytes[$index] = [Convert]::ToByte($Hex.Substring(2 * $index, 2), 16)
    }
    return , $bytes
}

function Get-Hmac([string] $SaltHex, [string] $Clear) {
    $hmac = New-Object Security.Cryptography.HMACSHA256 -ArgumentList (, (ConvertFrom-Hex $SaltHex))
    $digest = $hmac.ComputeHash($utf8.GetBytes($Clear))
    $hmac.Dispose()
    return (@($digest | ForEach-Object { $_.ToString('x2') }) -join '')
}

function Open-SealedSecret($Secret) {
    # RSA-OAEP (SHA-1) with the machine's seal key; the fingerprint proves it is the value the
    # provisioner meant. Neither error message can contain the value.
    $rsa = Get-SealKey
    try {
        $clear = $utf8.GetString($rsa.Decrypt([Convert]::FromBase64String([string]$Secret['sealed']), $true))
    } catch {
        throw 'a sealed secret cannot be opened with this host''s seal key (sealed to another key?)'
    } finally { $rsa.Dispose() }
    $fingerprint = $Secret['fingerprint']
    if ((Get-Hmac ([string]$fingerprint['salt']) $clear) -cne ([string]$fingerprint['hmac']).ToLowerInvariant()) {
        throw 'a sealed secret does not match its fingerprint'
    }
    return $clear
}

function Set-Fingerprint($Key, $Fingerprint, [string] $SaltValue, [string] $HmacValue) {
    $Key.SetValue($SaltValue, [string]$Fingerprint['salt'], 'String')
    $Key.SetValue($HmacValue, ([string]$Fingerprint['hmac']).ToLowerInvariant(), 'String')
}

# provisioner-include: private_directory.ps1
# provisioner-include: host_lock.ps1

# --- TAPI providers ---------------------------------------------------------------------------

function Initialize-Tapi {
    if (-not ('ProvisionerTapi' -as [type])) { Add-Type -TypeDefinition $TapiSource }
}

function Find-ProviderId([string] $File) {
    # The permanent provider id registered for this .tsp file name, or $null.
    $key = Open-RegistryKey $ProvidersKey
    if ($null -eq $key) { return $null }
    $count = [int]$key.GetValue('NumProviders', 0)
    for ($index = 0; $index -lt $count; $index++) {
        if ([string]::Equals([string]$key.GetValue("ProviderFileName$index", ''), $File, 'OrdinalIgnoreCase')) {
            return [uint32]$key.GetValue("ProviderID$index", 0)
        }
    }
    return $null
}

function Assert-TspFileName([string] $File) {
    Assert-Match $File '^(?i)[A-Z0-9][A-Z0-9_.\-]*\.tsp$' 'TSP file name'
}

# --- operations: one function each, dispatched by Invoke-Operation ---------------------------

# Windows Installer's exit codes (learn.microsoft.com/windows/win32/msi/error-codes): what each
# means, and what to do about it.
$MsiExitCodes = @{
    1602 = 'ERROR_INSTALL_USEREXIT: the installation was cancelled'
    1603 = 'ERROR_INSTALL_FAILURE: a fatal error during installation (a newer version installed, a failed custom action: the log says)'
    1605 = 'ERROR_UNKNOWN_PRODUCT: the product is not installed'
    1618 = 'ERROR_INSTALL_ALREADY_RUNNING: another installation is in progress; apply again when it has finished'
    1619 = 'ERROR_INSTALL_PACKAGE_OPEN_FAILED: the package could not be opened'
    1620 = 'ERROR_INSTALL_PACKAGE_INVALID: the file is not a valid Windows Installer package'
    1625 = 'ERROR_INSTALL_PACKAGE_REJECTED: system policy forbids this installation'
    1633 = 'ERROR_INSTALL_PLATFORM_UNSUPPORTED: the package is not for this platform'
    1638 = 'ERROR_PRODUCT_VERSION: another version of this product is already installed'
}

function Get-PackageFile($Op, [string] $Sha256) {
    # The package in the cache under its sha256: uploaded before this batch, or fetched now from
    # an https URL or a share the host reads by itself. Its sha256 is checked before any use.
    $msi = Join-Path $PackageCache "$Sha256.msi"
    $source = [string]$Op['source']
    switch -Exact ([string]$Op['fetch']) {
        'upload' {
            if (-not [IO.File]::Exists($msi)) { throw "the package $source ($Sha256) was not uploaded to this host; nothing was installed" }
        }
        'https' {
            if ($source -notmatch '^(?i)https://') { throw "the package source '$source' is not an https:// URL" }
            [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
            $client = New-Object Net.WebClient
            try { $client.DownloadFile($source, "$msi.part") }
            catch { throw "the host cannot download $($source): $($_.Exception.GetBaseException().Message)" }
            finally { $client.Dispose() }
            Move-Item -LiteralPath "$msi.part" -Destination $msi -Force
        }
        'unc' {
            try { [IO.File]::Copy($source, "$msi.part", $true) }
            catch [UnauthorizedAccessException] {
                throw "the host cannot read $source (access denied): over WinRM it has no credentials for another machine (the second hop), so the share must grant this host access by itself; or send the package from your workstation (a file path as package.source)"
            }
            catch { throw "the host cannot read $($source): $($_.Exception.GetBaseException().Message)" }
            Move-Item -LiteralPath "$msi.part" -Destination $msi -Force
        }
        default { throw "package fetch '$($Op['fetch'])' is not known" }
    }
    $actual = (Get-FileHash -LiteralPath $msi -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($actual -ne $Sha256) {
        Remove-Item -LiteralPath $msi -Force
        throw "the package from $source has sha256 $actual, not $Sha256; nothing was installed"
    }
    return $msi
}

function Invoke-PackageInstall($Op) {
    # The checked package, then msiexec quietly. A package that keeps the installed product's
    # ProductCode (a minor upgrade) installs only as a reinstall: REINSTALL=ALL REINSTALLMODE=vomus.
    $sha256 = ([string]$Op['sha256']).ToLowerInvariant()
    Assert-Match $sha256 '^[0-9a-f]{64}$' 'sha256'
    New-PrivateDirectory $PackageCache
    $msi = Get-PackageFile $Op $sha256
    $log = Join-Path $PackageCache "$sha256.install.log"
    # msiexec parses its own command line: PROPERTY="value" with quotes doubled.
    $arguments = '/i "{0}" /qn /norestart /l*v "{1}"' -f $msi, $log
    $properties = @{}
    foreach ($name in @($Op['properties'].Keys)) { $properties[$name] = [string]$Op['properties'][$name] }
    if ($Op['reinstall']) { $properties['REINSTALL'] = 'ALL'; $properties['REINSTALLMODE'] = 'vomus' }
    foreach ($name in @($properties.Keys | Sort-Object)) {
        Assert-Match $name '^[A-Za-z_][A-Za-z0-9_.]*$' 'MSI property name'
        $arguments += ' {0}="{1}"' -f $name, $properties[$name].Replace('"', '""')
    }
    $result = Invoke-Native (Join-Path $System32 'msiexec.exe') $arguments 'msiexec'
    $code = [int]$result['exit_code']
    if (@(0, 1641, 3010) -notcontains $code) {
        $meaning = $MsiExitCodes[$code]
        if (-not $meaning) { $meaning = 'see the Windows Installer error codes' }
        $hint = ''
        if ($code -eq 1638) {
            $hint = '; this package has the ProductCode of the installed version'
            if ($Op['installed_product_code']) { $hint += " (set package.product_code: '$($Op['installed_product_code'])' to upgrade it as a reinstall)" }
            else { $hint += ' (set package.product_code to upgrade it as a reinstall)' }
        }
        throw "msiexec exited with $code ($meaning)$hint; see $log"
    }
    return @{ exit_code = $code; reboot_required = (@(1641, 3010) -contains $code); reinstall = [bool]$Op['reinstall']; log = $log }
}

function Get-CheckedService([string] $Name) {
    Assert-Match $Name '^[A-Za-z0-9_.\- ]+$' 'service name'
    return Get-Service -Name ([Management.Automation.WildcardPattern]::Escape($Name))
}

# Win32_Service.Change's return values (learn.microsoft.com/windows/win32/cimwin32prov/
# change-method-in-class-win32-service), by name, with what to check.
$ChangeReturnCodes = @{
    1 = 'Not Supported'; 2 = 'Access Denied: the WinRM user needs an elevated administrator token (a local account other than Administrator is filtered by remote UAC)'
    3 = 'Dependent Services Running'; 4 = 'Invalid Service Control'; 5 = 'Service Cannot Accept Control'
    6 = 'Service Not Active'; 7 = 'Service Request Timeout'; 8 = 'Unknown Failure'; 9 = 'Path Not Found'
    10 = 'Service Already Running'; 11 = 'Service Database Locked'; 12 = 'Service Dependency Deleted'
    13 = 'Service Dependency Failure'; 14 = 'Service Disabled'
    15 = 'Service Logon Failed: the account''s password is wrong, or the account cannot log on'
    16 = 'Service Marked For Deletion'; 17 = 'Service No Thread'; 18 = 'Status Circular Dependency'
    19 = 'Status Duplicate Name'; 20 = 'Status Invalid Name'
    21 = 'Status Invalid Parameter: a built-in account takes an empty password, never none'
    22 = 'Status Invalid Service Account: the account does not exist or may not run the service'
    23 = 'Status Service Exists'; 24 = 'Service Already Paused'
}

function Invoke-ServiceConfigure($Op) {
    # Start mode through sc.exe (the only tool that knows delayed-auto); account and password
    # through Win32_Service.Change, so the password is never on a command line. Another than a
    # built-in account gets 'Log on as a service' first; a built-in one takes StartPassword ""
    # (an empty string: NULL means "keep the password" and is refused for them).
    $name = [string]$Op['name']
    $service = Get-CheckedService $name
    $data = @{}
    $mode = Get-Field $Op 'start_mode'
    if ($null -ne $mode) {
        $scMode = @{ 'auto' = 'auto'; 'delayed-auto' = 'delayed-auto'; 'manual' = 'demand'; 'disabled' = 'disabled' }[[string]$mode]
        if ($null -eq $scMode) { throw "start mode '$mode' is not known" }
        $result = Invoke-Native (Join-Path $System32 'sc.exe') (Join-Arguments @('config', $service.ServiceName, 'start=', $scMode)) 'command'
        if ($result['exit_code'] -ne 0) { throw "sc.exe config failed ($($result['exit_code'])): $($result['stdout'].Trim())" }
        $data['start_mode'] = [string]$mode
    }
    $account = Get-Field $Op 'account'
    $password = Get-Field $Op 'password'
    if ($null -ne $account -or $null -ne $password) {
        $arguments = @{}
        if ($null -ne $password) { $arguments['StartPassword'] = Open-SealedSecret $password }
        if ($null -ne $account) {
            $arguments['StartName'] = [string]$account
            $data['logon_right'] = Grant-LogonRight ([string]$account)
            if ($BuiltinAccountSids[([string]$account).Trim()]) { $arguments['StartPassword'] = '' }
        }
        $wmi = Get-CimInstance -ClassName Win32_Service -Filter ("Name='{0}'" -f $service.ServiceName)
        $outcome = Invoke-CimMethod -InputObject $wmi -MethodName Change -Arguments $arguments
        $arguments = $null
        $code = [int]$outcome.ReturnValue
        if ($code -ne 0) {
            $meaning = $ChangeReturnCodes[$code]
            if (-not $meaning) { $meaning = 'Other' }
            throw "Win32_Service.Change for $($service.ServiceName) returned $code ($meaning)"
        }
        if ($null -ne $password) {
            $key = Open-RegistryKey "$StateKey\Services\$($service.ServiceName)" -Write
            try { Set-Fingerprint $key $password['fingerprint'] 'PasswordSalt' 'PasswordHmac' } finally { $key.Dispose() }
            $data['password'] = 'set'
        }
        if ($null -ne $account) { $data['account'] = [string]$account }
    }
    return $data
}

function Invoke-LogonRightGrant($Op) {
    return @{ account = [string]$Op['account']; logon_right = (Grant-LogonRight ([string]$Op['account'])) }
}

function Wait-ServiceStatus($Service, [string] $Status) {
    # ServiceController waits without end unless told; a stop that hangs is stopped waiting for.
    $seconds = [int]$Timeouts['service']
    try { $Service.WaitForStatus($Status, [TimeSpan]::FromSeconds($seconds)) }
    catch [ServiceProcess.TimeoutException] {
        throw (Format-Timeout "$($Service.ServiceName) ($($Status.ToLowerInvariant()))" $seconds 'service')
    }
}

function Start-CheckedService($Service) {
    # A start that fails says why: 1069 is the logon (no 'Log on as a service', or a password
    # the account no longer has).
    try { $Service.Start() }
    catch {
        $native = $_.Exception.GetBaseException()
        if ($native -is [ComponentModel.Win32Exception] -and $native.NativeErrorCode -eq 1069) {
            $account = [string](Get-CimInstance -ClassName Win32_Service -Filter ("Name='{0}'" -f $Service.ServiceName)).StartName
            throw "$($Service.ServiceName) did not start: its account $account cannot log on as a service (error 1069: it lacks 'Log on as a service', or the stored password is no longer the account's)"
        }
        throw "$($Service.ServiceName) did not start: $($native.Message)"
    }
    Wait-ServiceStatus $Service 'Running'
}

function Invoke-ServiceControl($Op) {
    $service = Get-CheckedService ([string]$Op['name'])
    $op = [string]$Op['op']
    if ($op -ne 'service.start' -and [string]$service.Status -ne 'Stopped') {
        # Stop also stops the services that depend on this one (ServiceController.Stop).
        if ([string]$service.Status -ne 'StopPending') { $service.Stop() }
        Wait-ServiceStatus $service 'Stopped'
    }
    if ($op -ne 'service.stop') {
        $service.Refresh()
        if ([string]$service.Status -ne 'Running') { Start-CheckedService $service }
    }
    $service.Refresh()
    return @{ state = [string]$service.Status }
}

function Invoke-TelephonyConfigure($Op) {
    # Takes effect when the Telephony service restarts (the plan's handler does that once).
    $key = Open-RegistryKey $TelephonyServerKey -Write
    try {
        $key.SetValue($TelephonyServerDisabledValue, $(if ($Op['server_mode']) { 0 } else { 1 }), 'DWord')
        [string[]]$administrators = @($Op['administrators'] | ForEach-Object { [string]$_ })
        $key.SetValue($TelephonyAdministratorsValue, $administrators, 'MultiString')
    } finally { $key.Dispose() }
    return @{ server_mode = [string][bool]$Op['server_mode']; administrators = [string]@($Op['administrators']).Count }
}

function Invoke-TspInstanceCreate($Op) {
    # What NFON's CreateInstance.bat does: a renamed copy of the TSP, its display name set with
    # verpatch (downloaded separately, the NFON manual says: it is not in the package), then the
    # provider registered (lineAddProvider).
    $file = [string]$Op['file']
    $source = [string]$Op['tsp_file']
    Assert-TspFileName $file
    Assert-TspFileName $source
    $verpatch = [Environment]::ExpandEnvironmentVariables([string]$Op['verpatch_path'])
    $target = Join-Path $System32 $file
    $data = @{ file = $file; copied = 'False'; registered = 'False' }
    if (-not [IO.File]::Exists($target)) {
        $original = Join-Path $System32 $source
        if (-not [IO.File]::Exists($original)) { throw "$original is missing: install the NFON TAPI package first" }
        if (-not [IO.File]::Exists($verpatch)) { throw "verpatch.exe is not at $($verpatch): download it (the NFON manual's section on TSP instances) and copy it there, or set platform.verpatch_path" }
        [IO.File]::Copy($original, $target, $false)
        $result = Invoke-Native $verpatch (Join-Arguments @($target, '/s', 'desc', [string]$Op['provider_name'])) 'command'
        if ($result['exit_code'] -ne 0) {
            Remove-Item -LiteralPath $target -Force
            throw "verpatch failed ($($result['exit_code'])): $($result['stdout'].Trim())"
        }
        $data['copied'] = 'True'
    }
    $id = Find-ProviderId $file
    if ($null -eq $id) {
        Initialize-Tapi
        $id = [uint32]0
        $code = [ProvisionerTapi]::LineAddProvider($file, [IntPtr]::Zero, [ref]$id)
        if ($code -ne 0) { throw ('lineAddProvider({0}) failed with 0x{1:X8}' -f $file, $code) }
        $data['registered'] = 'True'
    }
    $data['provider_id'] = [string]$id
    return $data
}

function Resolve-InstanceKey([string] $Path, [string] $Instance) {
    return $Path.Replace('{instance}', $Instance)
}

function New-InstanceKeySecurity([string] $Reader) {
    # The key holds the CTI API password: it must not inherit HKLM\SOFTWARE's "Users: Read".
    # SYSTEM and Administrators keep full control; TapiSrv's account, which loads the TSP, reads.
    $security = New-Object Security.AccessControl.RegistrySecurity
    $security.SetAccessRuleProtection($true, $false)
    $grants = @(@($SystemSid, 'FullControl'), @($AdministratorsSid, 'FullControl'), @($Reader, 'ReadKey'))
    foreach ($grant in $grants) {
        $identity = Resolve-AccountSid $grant[0]
        $rule = New-Object Security.AccessControl.RegistryAccessRule -ArgumentList $identity, $grant[1], 'ContainerInherit', 'None', 'Allow'
        $security.AddAccessRule($rule)
    }
    return $security
}

function Invoke-TspInstanceConfigure($Op) {
    # The protected ACL is in place before any value, the password above all, is written.
    $path = Resolve-InstanceKey ([string]$Op['settings_key']) ([string]$Op['instance'])
    $password = Get-Field $Op 'password'
    $clear = $null
    if ($null -ne $password) { $clear = Open-SealedSecret $password }
    $security = New-InstanceKeySecurity ([string]$Op['reader'])
    $key = Open-RegistryKey $path -Write -Security $security
    try {
        $key.SetValue($TspKAccountValue, [string]$Op['k_account'], 'String')
        $key.SetValue($TspNumberFormatValue, [string]$Op['number_format'], 'String')
        $key.SetValue($TspLineNameFormatValue, [string]$Op['line_name_format'], 'String')
        $key.SetValue($TspDebugLevelValue, [int]$Op['debug_level'], 'DWord')
        if ($null -ne $clear) {
            $key.SetValue($TspPasswordValue, $clear, 'String')
            Set-Fingerprint $key $password['fingerprint'] $TspPasswordSaltValue $TspPasswordHmacValue
        }
    } finally { $key.Dispose() }
    $clear = $null
    return @{ settings_key = $path; password = $(if ($null -ne $password) { 'set' } else { 'unchanged' }) }
}

function Invoke-TspInstanceRemove($Op) {
    $file = [string]$Op['file']
    Assert-TspFileName $file
    $data = @{ file = $file; unregistered = 'False'; file_removed = 'False' }
    $id = Find-ProviderId $file
    if ($null -ne $id) {
        Initialize-Tapi
        $code = [ProvisionerTapi]::LineRemoveProvider([uint32]$id, [IntPtr]::Zero)
        if ($code -ne 0) { throw ('lineRemoveProvider({0}) failed with 0x{1:X8}' -f $id, $code) }
        $data['unregistered'] = 'True'
    }
    $target = Join-Path $System32 $file
    if ([IO.File]::Exists($target)) {
        try { [IO.File]::Delete($target) }
        catch { throw "$target is still in use: restart the Telephony service (TapiSrv) and apply again" }
        $data['file_removed'] = 'True'
    }
    Remove-RegistryKey (Resolve-InstanceKey ([string]$Op['settings_key']) ([string]$Op['instance']))
    return $data
}

function Find-CountryId([int] $DialingCode) {
    # The Country List id with this dialing code; the id equal to the code wins (Germany: 49).
    $countries = Open-RegistryKey $CountryListKey
    if ($null -eq $countries) { throw "$CountryListKey is missing" }
    $found = $null
    foreach ($name in $countries.GetSubKeyNames()) {
        $code = $countries.OpenSubKey($name).GetValue('CountryCode', $null)
        if ($null -ne $code -and [int]$code -eq $DialingCode) {
            if ($name -eq [string]$DialingCode) { return [int]$name }
            if ($null -eq $found) { $found = [int]$name }
        }
    }
    if ($null -eq $found) { throw "no country in the Country List dials +$DialingCode" }
    return $found
}

function Invoke-LocationSet($Op) {
    # The location with this name (case-insensitive) is updated, else created; it becomes current.
    $name = [string]$Op['name']
    $country = Find-CountryId ([int]$Op['country_code'])
    $root = Open-RegistryKey $LocationsKey -Write
    try {
        $subName = $null
        $id = $null
        foreach ($candidate in $root.GetSubKeyNames()) {
            if ($candidate -notmatch '^(?i)Location\d+$') { continue }
            $existing = $root.OpenSubKey($candidate)
            if ([string]::Equals([string]$existing.GetValue('Name', ''), $name, 'OrdinalIgnoreCase')) {
                $subName = $candidate
                $id = [int]$existing.GetValue('ID', 0)
                break
            }
        }
        $created = $null -eq $subName
        if ($created) {
            $id = [int]$root.GetValue('NextID', 1)
            $root.SetValue('NextID', $id + 1, 'DWord')
            $subName = "Location$id"
        }
        $key = $root.CreateSubKey($subName)
        try {
            $key.SetValue('ID', $id, 'DWord')
            $key.SetValue('Name', $name, 'String')
            $key.SetValue('Country', $country, 'DWord')
            $key.SetValue('AreaCode', [string]$Op['area_code'], 'String')
            $key.SetValue('OutsideAccess', [string]$Op['outside_access'], 'String')
            $key.SetValue('LongDistanceAccess', [string]$Op['long_distance_access'], 'String')
            $key.SetValue($LocationInternationalValue, [string]$Op['international_access'], 'String')
        } finally { $key.Dispose() }
        $root.SetValue('CurrentID', $id, 'DWord')
    } finally { $root.Dispose() }
    return @{ id = [string]$id; created = [string]$created }
}

function Test-FirewallRule($Policy, [string] $Name) {
    try { [void]$Policy.Rules.Item($Name); return $true } catch { return $false }
}

function Remove-FirewallRuleNamed($Policy, [string] $Name) {
    # Rules.Remove takes one rule of that name per call; names are not unique in the store.
    $removed = 0
    while ((Test-FirewallRule $Policy $Name) -and $removed -lt 100) {
        $Policy.Rules.Remove($Name)
        $removed++
    }
    return $removed
}

function Invoke-FirewallUpsert($Op) {
    # A fresh rule replaces any of the same name: no stale property survives an update.
    $spec = $Op['rule']
    $name = [string]$spec['name']
    $protocol = [int]$spec['protocol']
    $hasPorts = ([string]$spec['local_ports'] -ne '*') -or ([string]$spec['remote_ports'] -ne '*')
    if ($hasPorts -and $protocol -ne 6 -and $protocol -ne 17) {
        throw "rule '$name': ports need protocol 6 (TCP) or 17 (UDP), not $protocol"
    }
    $rule = New-Object -ComObject HNetCfg.FWRule
    $rule.Name = $name
    $rule.Description = [string]$spec['description']
    $rule.Grouping = [string]$spec['group']
    $rule.Direction = [int]$spec['direction']
    $rule.Action = [int]$spec['action']
    $rule.Protocol = $protocol  # before the ports: COM refuses ports while the protocol has none
    if ($protocol -eq 6 -or $protocol -eq 17) {
        $rule.LocalPorts = [string]$spec['local_ports']
        $rule.RemotePorts = [string]$spec['remote_ports']
    }
    $rule.RemoteAddresses = [string]$spec['remote_addresses']
    $rule.Profiles = [int]$spec['profiles']
    $rule.Enabled = [bool]$spec['enabled']
    $policy = New-Object -ComObject HNetCfg.FwPolicy2
    $replaced = Remove-FirewallRuleNamed $policy $name
    $policy.Rules.Add($rule)
    return @{ name = $name; replaced = [string]$replaced }
}

function Invoke-FirewallRemove($Op) {
    $policy = New-Object -ComObject HNetCfg.FwPolicy2
    $removed = Remove-FirewallRuleNamed $policy ([string]$Op['name'])
    return @{ name = [string]$Op['name']; removed = [string]$removed }
}

function Invoke-TsecimpImport($Op) {
    # The listing from before goes to a backup file first; the XML is checked with /v, then
    # imported with /f. tsecimp's exit codes are undocumented: GUESS, non-zero is a failure.
    $backupName = [string]$Op['backup_name']
    Assert-Match $backupName '^[A-Za-z0-9][A-Za-z0-9_.\-]*$' 'backup file name'
    $tsecimp = Join-Path $System32 'tsecimp.exe'
    $backupDir = Join-Path $StateDir 'backups'
    [void][IO.Directory]::CreateDirectory($backupDir)
    $backup = Join-Path $backupDir $backupName
    [IO.File]::WriteAllText($backup, [string](Invoke-Native $tsecimp '/d' 'command')['stdout'], $utf8)
    $xmlPath = Join-Path ([IO.Path]::GetTempPath()) ('provisioner-tsecimp-{0}.xml' -f [guid]::NewGuid())
    [IO.File]::WriteAllText($xmlPath, [string]$Op['xml'], $utf8)
    try {
        $check = Invoke-Native $tsecimp (Join-Arguments @('/f', $xmlPath, '/v')) 'command'
        if ($check['exit_code'] -ne 0) {
            throw "tsecimp /v rejected the XML ($($check['exit_code'])): $(($check['stdout'] + $check['stderr']).Trim())"
        }
        $import = Invoke-Native $tsecimp (Join-Arguments @('/f', $xmlPath)) 'command'
        if ($import['exit_code'] -ne 0) {
            throw "tsecimp /f failed ($($import['exit_code'])): $(($import['stdout'] + $import['stderr']).Trim())"
        }
    } finally { Remove-Item -LiteralPath $xmlPath -Force -ErrorAction SilentlyContinue }
    return @{ exit_code = [string]$import['exit_code']; output = ($import['stdout'] + $import['stderr']).Trim(); backup = $backup }
}

function Invoke-TapiClientSet($Op) {
    # tcmsetup replaces the server list; with no servers it clears it and disables the client.
    $arguments = @('/q')
    $servers = @($Op['servers'] | ForEach-Object { [string]$_ })
    if ($servers.Count -eq 0) {
        $arguments += @('/c', '/d')
    } else {
        if ($Op['connection_oriented']) { $arguments += '/x' }
        $arguments += '/c'
        foreach ($server in $servers) {
            Assert-Match $server '^[A-Za-z0-9][A-Za-z0-9.\-]*$' 'TAPI server name'
            $arguments += $server
        }
    }
    $result = Invoke-Native (Join-Path $System32 'tcmsetup.exe') (Join-Arguments $arguments) 'command'
    if ($result['exit_code'] -ne 0) {
        throw "tcmsetup failed ($($result['exit_code'])): $(($result['stdout'] + $result['stderr']).Trim())"
    }
    return @{ exit_code = [string]$result['exit_code']; servers = ($servers -join ' ') }
}

function Invoke-Operation($Op) {
    switch -Exact ([string]$Op['op']) {
        'package.install' { return Invoke-PackageInstall $Op }
        'service.configure' { return Invoke-ServiceConfigure $Op }
        'logon_right.grant' { return Invoke-LogonRightGrant $Op }
        'service.start' { return Invoke-ServiceControl $Op }
        'service.stop' { return Invoke-ServiceControl $Op }
        'service.restart' { return Invoke-ServiceControl $Op }
        'telephony.configure' { return Invoke-TelephonyConfigure $Op }
        'tsp_instance.create' { return Invoke-TspInstanceCreate $Op }
        'tsp_instance.configure' { return Invoke-TspInstanceConfigure $Op }
        'tsp_instance.remove' { return Invoke-TspInstanceRemove $Op }
        'location.set' { return Invoke-LocationSet $Op }
        'firewall.upsert' { return Invoke-FirewallUpsert $Op }
        'firewall.remove' { return Invoke-FirewallRemove $Op }
        'tsecimp.import' { return Invoke-TsecimpImport $Op }
        'tapi_client.set' { return Invoke-TapiClientSet $Op }
        default { throw "operation '$($Op['op'])' is not known to this script" }
    }
}

function ConvertTo-StepData($Output) {
    # The operation's last dictionary, every value as a string (the contract's StepResult.data).
    $data = @{}
    foreach ($item in @($Output)) { if ($item -is [Collections.IDictionary]) { $data = $item } }
    $strings = @{}
    foreach ($name in $data.Keys) { $strings[[string]$name] = [string]$data[$name] }
    return $strings
}

# --- main -------------------------------------------------------------------------------------

$entered = Enter-Lock $request['lock'] $false
if (-not $entered['taken']) {
    return (ConvertTo-PlainData @{ contract = 2; status = 'locked'; lock = $entered['lock']; results = @() })
}
$status = 'ok'
$results = New-Object Collections.ArrayList
try {
    foreach ($step in @($request['steps'])) {
        if ($null -eq $step) { continue }
        $id = [string]$step['id']
        if ($status -ne 'ok') {
            [void]$results.Add(@{ id = $id; status = 'not-run'; message = ''; data = @{} })
            continue
        }
        try {
            $data = ConvertTo-StepData @(Invoke-Operation $step['operation'])
            [void]$results.Add(@{ id = $id; status = 'ok'; message = ''; data = $data })
        } catch {
            $status = 'failed'
            [void]$results.Add(@{ id = $id; status = 'failed'; message = [string]$_.Exception.Message; data = @{} })
        }
    }
} finally { Exit-Lock $entered $request['lock'] }
return (ConvertTo-PlainData @{ contract = 2; status = $status; lock = $null; results = $results })
