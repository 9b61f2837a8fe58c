# provisioner-contract: apply 1
# Takes the host's lock, performs the operations of an ApplyRequest in order, stops at the first
# failure, releases the lock and returns one ApplyResponse (provisioner/remote/contract.py).
# Input, e.g.:
#   {"contract": 1, "lock": {"owner": "alice@ws17 pid 4711", "ttl_seconds": 900},
#    "steps": [{"id": "firewall/nfon-tapi-in-smb",
#               "operation": {"op": "firewall.remove", "name": "nfon-tapi-in-smb"}}]}
# Every value arrives as data in the parsed JSON; none is ever pasted into code.
param($request)
$ErrorActionPreference = 'Stop'

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
# From the NFON manual: the install folder; GUESS: verpatch.exe sits in its Tools folder.
$ProgramFiles32 = ${env:ProgramFiles(x86)}
if (-not $ProgramFiles32) { $ProgramFiles32 = $env:ProgramFiles }
$VerpatchPath = Join-Path $ProgramFiles32 'NFON\NFON TAPI\Tools\verpatch.exe'

# --- where things are (documented: Microsoft's TAPI provider and dialing-location keys) --------
$ProvidersKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Providers'
$LocationsKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Locations'
$CountryListKey = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Telephony\Country List'
$StateDir = Join-Path $env:ProgramData 'NFON-Provisioner'
$LockPath = Join-Path $StateDir 'lock.json'
$StateKey = 'HKLM\SOFTWARE\NFON-Provisioner'
$SealKeyContainer = 'NFON-Provisioner-Seal'

$System32 = Join-Path $env:windir 'System32'
if ([Environment]::Is64BitOperatingSystem -and -not [Environment]::Is64BitProcess) {
    # A 32-bit PowerShell would be redirected to SysWOW64 (Microsoft Learn, "File System
    # Redirector").
    $System32 = Join-Path $env:windir 'Sysnative'
}
$utf8 = New-Object Text.UTF8Encoding $false
$serializer = New-Object Web.Script.Serialization.JavaScriptSerializer
$serializer.MaxJsonLength = [int]::MaxValue

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

function Open-RegistryKey([string] $Path, [switch] $Write) {
    # Always the 64-bit view; with -Write the key is created when missing, else $null if absent.
    $hive = [Microsoft.Win32.RegistryKey]::OpenBaseKey('LocalMachine', 'Registry64')
    if ($Write) { return $hive.CreateSubKey((Get-RegistrySubKey $Path)) }
    return $hive.OpenSubKey((Get-RegistrySubKey $Path))
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

function Invoke-Native([string] $FilePath, [string] $Arguments) {
    # Runs a program directly (no shell between us and it). Its output is decoded from the OEM
    # code page: GUESS, what Windows console tools write when redirected.
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
    $stdout = $process.StandardOutput.ReadToEnd()
    $process.WaitForExit()
    return @{ exit_code = $process.ExitCode; stdout = $stdout; stderr = $stderr.Result }
}

function Assert-Match([string] $Value, [string] $Pattern, [string] $What) {
    if ($Value -cnotmatch $Pattern) { throw "$What '$Value' is not valid" }
}

function Format-IsoTime([DateTime] $Time) {
    return $Time.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", [Globalization.CultureInfo]::InvariantCulture)
}

function ConvertFrom-IsoTime([string] $Text) {
    $styles = [Globalization.DateTimeStyles]'AdjustToUniversal, AssumeUniversal'
    return [DateTime]::Parse($Text, [Globalization.CultureInfo]::InvariantCulture, $styles)
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

# --- the lock ---------------------------------------------------------------------------------

function Open-LockFile {
    # An exclusive handle: two applies cannot both read "free" and then both write.
    [void][IO.Directory]::CreateDirectory($StateDir)
    for ($attempt = 0; $attempt -lt 50; $attempt++) {
        try { return [IO.File]::Open($LockPath, 'OpenOrCreate', 'ReadWrite', 'None') }
        catch [IO.IOException] { Start-Sleep -Milliseconds 100 }
    }
    throw "the lock file $LockPath stays open in another process"
}

function Read-Lock([IO.FileStream] $Stream) {
    # An empty or unreadable file holds no lock.
    $reader = New-Object IO.StreamReader -ArgumentList $Stream, $utf8, $false, 4096, $true
    $text = $reader.ReadToEnd()
    $reader.Dispose()
    if (-not $text.Trim()) { return $null }
    try { $lock = $serializer.DeserializeObject($text) } catch { return $null }
    if ($lock -isnot [Collections.IDictionary]) { return $null }
    foreach ($field in 'owner', 'acquired', 'expires') { if (-not $lock.ContainsKey($field)) { return $null } }
    return @{ owner = [string]$lock['owner']; acquired = [string]$lock['acquired']; expires = [string]$lock['expires'] }
}

function Enter-Lock([string] $Owner, [int] $TtlSeconds) {
    # Free, expired or already ours: take it. Held by another owner: report the holder.
    $stream = Open-LockFile
    try {
        $held = Read-Lock $stream
        $now = [DateTime]::UtcNow
        if ($null -ne $held -and $held['owner'] -cne $Owner) {
            $expires = $null
            try { $expires = ConvertFrom-IsoTime $held['expires'] } catch { }
            if ($null -ne $expires -and $expires -gt $now) { return @{ taken = $false; lock = $held } }
        }
        $lock = @{ owner = $Owner; acquired = (Format-IsoTime $now); expires = (Format-IsoTime $now.AddSeconds($TtlSeconds)) }
        $bytes = $utf8.GetBytes($serializer.Serialize($lock))
        $stream.SetLength(0)
        $stream.Position = 0
        $stream.Write($bytes, 0, $bytes.Length)
        $stream.Flush()
        return @{ taken = $true; lock = $lock }
    } finally { $stream.Dispose() }
}

function Exit-Lock([string] $Owner) {
    # Emptying the file releases the lock; a lock someone else took meanwhile is left alone.
    $stream = Open-LockFile
    try {
        $held = Read-Lock $stream
        if ($null -eq $held -or $held['owner'] -ceq $Owner) { $stream.SetLength(0) }
    } finally { $stream.Dispose() }
}

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

function Invoke-PackageInstall($Op) {
    # Fetch (UNC path or URL), check the sha256 BEFORE anything runs, then msiexec quietly.
    $sha256 = ([string]$Op['sha256']).ToLowerInvariant()
    Assert-Match $sha256 '^[0-9a-f]{64}$' 'sha256'
    $cache = Join-Path $StateDir 'packages'
    [void][IO.Directory]::CreateDirectory($cache)
    $msi = Join-Path $cache "$sha256.msi"
    $partial = "$msi.part"
    $source = [string]$Op['source']
    if ($source -match '^(?i)https?://') {
        [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
        $client = New-Object Net.WebClient
        try { $client.DownloadFile($source, $partial) } finally { $client.Dispose() }
    } else {
        Copy-Item -LiteralPath $source -Destination $partial -Force
    }
    $actual = (Get-FileHash -LiteralPath $partial -Algorithm SHA256).Hash.ToLowerInvariant()
    if ($actual -ne $sha256) {
        Remove-Item -LiteralPath $partial -Force
        throw "the package from $source has sha256 $actual, not $sha256; nothing was installed"
    }
    Move-Item -LiteralPath $partial -Destination $msi -Force
    $log = Join-Path $cache "$sha256.install.log"
    # msiexec parses its own command line: PROPERTY="value" with quotes doubled.
    $arguments = '/i "{0}" /qn /norestart /l*v "{1}"' -f $msi, $log
    $properties = $Op['properties']
    foreach ($name in @($properties.Keys | Sort-Object)) {
        Assert-Match $name '^[A-Za-z_][A-Za-z0-9_.]*$' 'MSI property name'
        $arguments += ' {0}="{1}"' -f $name, ([string]$properties[$name]).Replace('"', '""')
    }
    $result = Invoke-Native (Join-Path $System32 'msiexec.exe') $arguments
    $code = [int]$result['exit_code']
    if (@(0, 1641, 3010) -notcontains $code) { throw "msiexec exited with $code; see $log" }
    return @{ exit_code = $code; reboot_required = (@(1641, 3010) -contains $code); log = $log }
}

function Get-CheckedService([string] $Name) {
    Assert-Match $Name '^[A-Za-z0-9_.\- ]+$' 'service name'
    return Get-Service -Name ([Management.Automation.WildcardPattern]::Escape($Name))
}

function Invoke-ServiceConfigure($Op) {
    # Start mode through sc.exe (the only tool that knows delayed-auto); account and password
    # through Win32_Service.Change, so the password is never on a command line.
    $name = [string]$Op['name']
    $service = Get-CheckedService $name
    $data = @{}
    $mode = Get-Field $Op 'start_mode'
    if ($null -ne $mode) {
        $scMode = @{ 'auto' = 'auto'; 'delayed-auto' = 'delayed-auto'; 'manual' = 'demand'; 'disabled' = 'disabled' }[[string]$mode]
        if ($null -eq $scMode) { throw "start mode '$mode' is not known" }
        $result = Invoke-Native (Join-Path $System32 'sc.exe') (Join-Arguments @('config', $service.ServiceName, 'start=', $scMode))
        if ($result['exit_code'] -ne 0) { throw "sc.exe config failed ($($result['exit_code'])): $($result['stdout'].Trim())" }
        $data['start_mode'] = [string]$mode
    }
    $account = Get-Field $Op 'account'
    $password = Get-Field $Op 'password'
    if ($null -ne $account -or $null -ne $password) {
        $arguments = @{}
        if ($null -ne $account) { $arguments['StartName'] = [string]$account }
        if ($null -ne $password) { $arguments['StartPassword'] = Open-SealedSecret $password }
        $wmi = Get-CimInstance -ClassName Win32_Service -Filter ("Name='{0}'" -f $service.ServiceName)
        $outcome = Invoke-CimMethod -InputObject $wmi -MethodName Change -Arguments $arguments
        $arguments = $null
        if ($outcome.ReturnValue -ne 0) { throw "Win32_Service.Change failed with code $($outcome.ReturnValue)" }
        if ($null -ne $password) {
            $key = Open-RegistryKey "$StateKey\Services\$($service.ServiceName)" -Write
            try { Set-Fingerprint $key $password['fingerprint'] 'PasswordSalt' 'PasswordHmac' } finally { $key.Dispose() }
            $data['password'] = 'set'
        }
        if ($null -ne $account) { $data['account'] = [string]$account }
    }
    return $data
}

function Invoke-ServiceControl($Op) {
    $service = Get-CheckedService ([string]$Op['name'])
    switch ([string]$Op['op']) {
        'service.start' { Start-Service -InputObject $service }
        'service.stop' { Stop-Service -InputObject $service -Force }
        'service.restart' { Restart-Service -InputObject $service -Force }
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
    # verpatch, then the provider registered (lineAddProvider).
    $file = [string]$Op['file']
    $source = [string]$Op['tsp_file']
    Assert-TspFileName $file
    Assert-TspFileName $source
    $target = Join-Path $System32 $file
    $data = @{ file = $file; copied = 'False'; registered = 'False' }
    if (-not [IO.File]::Exists($target)) {
        $original = Join-Path $System32 $source
        if (-not [IO.File]::Exists($original)) { throw "$original is missing: install the NFON TAPI package first" }
        if (-not [IO.File]::Exists($VerpatchPath)) { throw "$VerpatchPath is missing: it names the instance's provider" }
        [IO.File]::Copy($original, $target, $false)
        $result = Invoke-Native $VerpatchPath (Join-Arguments @($target, '/s', 'desc', [string]$Op['provider_name']))
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

function Invoke-TspInstanceConfigure($Op) {
    $path = Resolve-InstanceKey ([string]$Op['settings_key']) ([string]$Op['instance'])
    $password = Get-Field $Op 'password'
    $clear = $null
    if ($null -ne $password) { $clear = Open-SealedSecret $password }
    $key = Open-RegistryKey $path -Write
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
    [IO.File]::WriteAllText($backup, [string](Invoke-Native $tsecimp '/d')['stdout'], $utf8)
    $xmlPath = Join-Path ([IO.Path]::GetTempPath()) ('provisioner-tsecimp-{0}.xml' -f [guid]::NewGuid())
    [IO.File]::WriteAllText($xmlPath, [string]$Op['xml'], $utf8)
    try {
        $check = Invoke-Native $tsecimp (Join-Arguments @('/f', $xmlPath, '/v'))
        if ($check['exit_code'] -ne 0) {
            throw "tsecimp /v rejected the XML ($($check['exit_code'])): $(($check['stdout'] + $check['stderr']).Trim())"
        }
        $import = Invoke-Native $tsecimp (Join-Arguments @('/f', $xmlPath))
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
    $result = Invoke-Native (Join-Path $System32 'tcmsetup.exe') (Join-Arguments $arguments)
    if ($result['exit_code'] -ne 0) {
        throw "tcmsetup failed ($($result['exit_code'])): $(($result['stdout'] + $result['stderr']).Trim())"
    }
    return @{ exit_code = [string]$result['exit_code']; servers = ($servers -join ' ') }
}

function Invoke-Operation($Op) {
    switch -Exact ([string]$Op['op']) {
        'package.install' { return Invoke-PackageInstall $Op }
        'service.configure' { return Invoke-ServiceConfigure $Op }
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

$owner = [string]$request['lock']['owner']
$entered = Enter-Lock $owner ([int]$request['lock']['ttl_seconds'])
if (-not $entered['taken']) {
    return (ConvertTo-PlainData @{ contract = 1; status = 'locked'; lock = $entered['lock']; results = @() })
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
} finally { Exit-Lock $owner }
return (ConvertTo-PlainData @{ contract = 1; status = $status; lock = $null; results = $results })
