# provisioner-contract: upload 2
# Keeps a package sent from the admin workstation in this host's package cache, under its sha256,
# once the sha256 of what arrived is checked here, and returns one UploadResponse
# (provisioner/remote/contract.py). Input: an UploadRequest, e.g.
#   {"contract": 2, "name": "NFONTAPI-1.0.0.msi", "sha256": "099b31ed...", "content": "<base64>"}
# Nothing else on the host changes; a package already held is written again, unchanged.
param($request)
$ErrorActionPreference = 'Stop'

$StateDir = Join-Path $env:ProgramData 'NFON-Provisioner'
$PackageCache = Join-Path $StateDir 'packages'
$SystemSid = 'S-1-5-18'
$AdministratorsSid = 'S-1-5-32-544'

# provisioner-include: private_directory.ps1

$sha256 = ([string]$request['sha256']).ToLowerInvariant()
if ($sha256 -cnotmatch '^[0-9a-f]{64}$') { throw "sha256 '$sha256' is not valid" }
$bytes = [Convert]::FromBase64String([string]$request['content'])
$hasher = [Security.Cryptography.SHA256]::Create()
$actual = (@($hasher.ComputeHash($bytes) | ForEach-Object { $_.ToString('x2') }) -join '')
$hasher.Dispose()
if ($actual -cne $sha256) {
    throw "the package $($request['name']) arrived with sha256 $actual, not $sha256; nothing was kept"
}
New-PrivateDirectory $StateDir
New-PrivateDirectory $PackageCache
$target = Join-Path $PackageCache "$sha256.msi"
[IO.File]::WriteAllBytes("$target.part", $bytes)
if ([IO.File]::Exists($target)) { [IO.File]::Delete($target) }
[IO.File]::Move("$target.part", $target)
return @{ contract = 2; sha256 = $sha256; size = $bytes.Length; path = $target }
