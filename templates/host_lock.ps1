# The host's lock: gather.ps1 and apply.ps1 include this file where their include line names it
# (provisioner/remote/scripts.py puts this text in its place before a script is sent).
# It uses $StateDir, $LockPath, $utf8 and $serializer, which both scripts define, and
# New-PrivateDirectory (private_directory.ps1, which both include too).

# --- the host's lock ------------------------------------------------------------------------
# lock.json holds {owner, acquired, expires}. A command that carries a lock request opens it for
# writing and keeps it open until it ends, sharing it for reading only: Windows refuses every
# other writer until the file is closed (FileShare.Read), so taking, renewing and giving back
# never race, and no one takes the lock while a command of its holder runs. Anyone may read it.

function Format-IsoTime([DateTime] $Time) {
    return $Time.ToUniversalTime().ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", [Globalization.CultureInfo]::InvariantCulture)
}

function ConvertFrom-IsoTime([string] $Text) {
    $styles = [Globalization.DateTimeStyles]'AdjustToUniversal, AssumeUniversal'
    return [DateTime]::Parse($Text, [Globalization.CultureInfo]::InvariantCulture, $styles)
}

function Read-LockRecord([IO.Stream] $Stream) {
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

function Write-LockRecord([IO.Stream] $Stream, $Lock) {
    # $null empties the file: the lock is free.
    $text = ''
    if ($null -ne $Lock) { $text = $serializer.Serialize($Lock) }
    $bytes = $utf8.GetBytes($text)
    $Stream.SetLength(0)
    $Stream.Position = 0
    $Stream.Write($bytes, 0, $bytes.Length)
    $Stream.Flush()
}

function Get-LockHolder {
    # Who holds the lock, read beside a command that keeps the file open; $null when no one does,
    # or when another program keeps even readers out for a moment.
    if (-not [IO.File]::Exists($LockPath)) { return $null }
    try { $stream = [IO.File]::Open($LockPath, 'Open', 'Read', 'ReadWrite') } catch [IO.IOException] { return $null }
    try { return Read-LockRecord $stream } finally { $stream.Dispose() }
}

function Enter-Lock($Request, [bool] $MayTake) {
    # Takes or renews the lock for the request's owner and keeps the file open (Exit-Lock closes
    # it): the owner's or the replaced owner's lock is renewed; a free or lapsed one is taken only
    # where $MayTake (a gather). Otherwise nothing is written: @{ taken = $false; lock = holder }.
    $owner = [string]$Request['owner']
    $replaces = [string]$Request['replaces']
    New-PrivateDirectory $StateDir
    $stream = $null
    for ($attempt = 1; $null -eq $stream; $attempt++) {
        try { $stream = [IO.File]::Open($LockPath, 'OpenOrCreate', 'ReadWrite', 'Read') }
        catch [IO.IOException] {
            $running = Get-LockHolder  # readable: a command of the holder runs now
            if ($null -ne $running) { return @{ taken = $false; lock = $running } }
            if ($attempt -ge 50) { throw "the lock file $LockPath stays open in another process" }
            Start-Sleep -Milliseconds 100
        }
    }
    $held = Read-LockRecord $stream
    $now = [DateTime]::UtcNow
    $since = $now
    if ($null -ne $held) {
        $expires = $null
        try { $expires = ConvertFrom-IsoTime $held['expires'] } catch { }
        $lapsed = $null -eq $expires -or $expires -le $now
        if ($held['owner'] -ceq $owner) {
            try { $since = ConvertFrom-IsoTime $held['acquired'] } catch { }
        } elseif (-not ($replaces -and $held['owner'] -ceq $replaces) -and -not ($lapsed -and $MayTake)) {
            $stream.Dispose()
            return @{ taken = $false; lock = $held }
        }
    } elseif (-not $MayTake) {
        $stream.Dispose()
        return @{ taken = $false; lock = $null }
    }
    $lock = @{ owner = $owner; acquired = (Format-IsoTime $since); expires = (Format-IsoTime $now.AddSeconds([int]$Request['ttl_seconds'])) }
    Write-LockRecord $stream $lock
    return @{ taken = $true; lock = $lock; stream = $stream }
}

function Exit-Lock($Entered, $Request) {
    # Renews the lock for its time to live from now, or gives it back (release); closes the file.
    $stream = $Entered['stream']
    try {
        $lock = $null
        if (-not $Request['release']) {
            $lock = $Entered['lock']
            $lock['expires'] = Format-IsoTime ([DateTime]::UtcNow.AddSeconds([int]$Request['ttl_seconds']))
        }
        Write-LockRecord $stream $lock
    } finally { $stream.Dispose() }
}

# --- end of the host's lock --------------------------------------------------------------------
