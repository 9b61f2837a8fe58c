# provisioner-contract: bootstrap 2
# stdin: <script>, a line "#==provisioner-json==#", <JSON>. Runs the script with the parsed JSON
# as its one argument; prints the one document it returns as JSON, or an error document + exit 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$utf8 = New-Object Text.UTF8Encoding $false
try { [Console]::InputEncoding = $utf8; [Console]::OutputEncoding = $utf8 } catch { }
Add-Type -AssemblyName System.Web.Extensions
# ConvertFrom-Json of PowerShell 5.1 fails on large documents; this serializer does not.
$json = New-Object Web.Script.Serialization.JavaScriptSerializer
$json.MaxJsonLength = [int]::MaxValue
$json.RecursionLimit = 256
$code = 0
try {
    # Raw bytes, decoded here: immune to the console code page.
    $buffer = New-Object IO.MemoryStream
    [Console]::OpenStandardInput().CopyTo($buffer)
    $parts = $utf8.GetString($buffer.ToArray()) -split '\r?\n#==provisioner-json==#\r?\n', 2
    if ($parts.Count -ne 2) { throw 'stdin holds no "#==provisioner-json==#" line' }
    $request = $json.DeserializeObject($parts[1])
    $output = @(& ([ScriptBlock]::Create($parts[0])) $request)
    if ($output.Count -ne 1 -or $output[0] -isnot [Collections.IDictionary]) {
        throw "the script returned $($output.Count) objects instead of one document"
    }
    $text = $json.Serialize($output[0])
} catch {
    $code = 1
    $where = $_.InvocationInfo.ScriptLineNumber
    $text = $json.Serialize(@{ contract = 2; error = @{ message = "$_"; line = $where } })
}
$bytes = $utf8.GetBytes($text)
$stdout = [Console]::OpenStandardOutput()
$stdout.Write($bytes, 0, $bytes.Length)
$stdout.Flush()
exit $code
