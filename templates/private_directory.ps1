# A folder only SYSTEM and Administrators may write to: gather.ps1, apply.ps1 and upload.ps1
# include this file where their include line names it. It uses $SystemSid and
# $AdministratorsSid, which each of them defines.

function New-PrivateDirectory([string] $Path) {
    # Only SYSTEM and Administrators may write here: under ProgramData every user may create
    # files, and a planted package or lock file must not be taken for ours.
    $security = New-Object Security.AccessControl.DirectorySecurity
    $security.SetAccessRuleProtection($true, $false)
    foreach ($sid in $SystemSid, $AdministratorsSid) {
        $identity = New-Object Security.Principal.SecurityIdentifier $sid
        $rule = New-Object Security.AccessControl.FileSystemAccessRule -ArgumentList $identity, 'FullControl', 'ContainerInherit, ObjectInherit', 'None', 'Allow'
        $security.AddAccessRule($rule)
    }
    if ([IO.Directory]::Exists($Path)) { [IO.Directory]::SetAccessControl($Path, $security) }
    else { [void][IO.Directory]::CreateDirectory($Path, $security) }
}
