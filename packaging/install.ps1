<#
.SYNOPSIS
    Pennello one-click installer for Windows. Safe to run again: it repairs and upgrades.

.DESCRIPTION
    powershell -ExecutionPolicy Bypass -File install.ps1                 install (asks about start at login)
    powershell -ExecutionPolicy Bypass -File install.ps1 -Yes            install without questions
    powershell -ExecutionPolicy Bypass -File install.ps1 -From D:\bundle air-gapped: no network at all
    powershell -ExecutionPolicy Bypass -File install.ps1 uninstall [-Purge]

    A virtual environment in %LOCALAPPDATA%\pennello\venv, torch (torch==2.13.0 first, else what
    the bundle holds / the newest), pennello (this checkout, PyPI, or BUNDLE\wheels with
    --no-index), the default model installed and verified, Pennello.lnk in the Startup folder
    (asked first unless -Yes), a Start menu shortcut, and then the tray (unless -NoStart).
    `install.ps1 uninstall` removes all of it but your pictures (Pictures\Pennello) unless -Purge.

    Environment: PENNELLO_VENV, PENNELLO_TORCH, PENNELLO_PIP_ARGS, PENNELLO_UV, PENNELLO_CPU_BACKEND,
    PENNELLO_HOME, PENNELLO_ASSUME_YES (as install.sh).
#>
[CmdletBinding()]
param(
    [Parameter(Position = 0)][ValidateSet("install", "uninstall")][string]$Action = "install",
    [string]$From = "",
    [string]$Source = "auto",
    [string]$Python = "",
    [switch]$SystemSitePackages,
    [switch]$TrustBundleKeys,
    [switch]$Yes,
    [switch]$Autostart,
    [switch]$NoAutostart,
    [switch]$NoStart,
    [switch]$Purge
)
$ErrorActionPreference = "Stop"
$env:PIP_DISABLE_PIP_VERSION_CHECK = "1"
$env:PIP_NO_INPUT = "1"
$Here = Split-Path -Parent $MyInvocation.MyCommand.Path
$TorchSpec = if ($env:PENNELLO_TORCH) { $env:PENNELLO_TORCH } else { "torch==2.13.0" }
$PipExtra = if ($env:PENNELLO_PIP_ARGS) { $env:PENNELLO_PIP_ARGS -split '\s+' | Where-Object { $_ } } else { @() }

# The same places pennello.paths uses (platformdirs, appauthor=False).
if ($env:PENNELLO_HOME) { $Data = Join-Path $env:PENNELLO_HOME "data" }
else { $Data = Join-Path $env:LOCALAPPDATA "pennello" }
$Venv = if ($env:PENNELLO_VENV) { $env:PENNELLO_VENV } else { Join-Path $Data "venv" }
$PyVenv = Join-Path $Venv "Scripts\python.exe"
$PyVenvW = Join-Path $Venv "Scripts\pythonw.exe"
$Pennello = Join-Path $Venv "Scripts\pennello.exe"
$Programs = [Environment]::GetFolderPath("Programs")
$StartupLink = Join-Path ([Environment]::GetFolderPath("Startup")) "Pennello.lnk"
$MenuLink = Join-Path $Programs "Pennello.lnk"
$Log = Join-Path $Data "install.log"
$script:Step = 0
$script:Steps = 8

function Step($title) { $script:Step++; Write-Host ""; Write-Host "[$($script:Step)/$($script:Steps)] $title" -ForegroundColor White }
function Say($text) { Write-Host "      $text" }
function Ok($text) { Write-Host "      " -NoNewline; Write-Host "OK" -ForegroundColor Green -NoNewline; Write-Host " $text" }
function Die($what, [string[]]$todo = @()) {
    Write-Host ""; Write-Host "error: $what" -ForegroundColor Red
    foreach ($line in $todo) { if ($line) { Write-Host "  -> $line" } }
    if (Test-Path $Log) { Write-Host "  (details: $Log)" }
    exit 1
}
function Ask($question, $default) {
    if ($Yes -or ($env:PENNELLO_ASSUME_YES -match '^(1|true|yes|on)$')) { return $true }
    if (-not [Environment]::UserInteractive -or [Console]::IsInputRedirected) { return $null }
    $hint = if ($default) { "[Y/n]" } else { "[y/N]" }
    $answer = Read-Host "      $question $hint"
    if (-not $answer) { return $default }
    return $answer -match '^[Yy]'
}
function Run-Logged([string]$exe, [string[]]$arguments) {
    Add-Content -Path $Log -Value "`n> $exe $($arguments -join ' ')"
    $output = & $exe @arguments 2>&1
    $code = $LASTEXITCODE
    $output | Out-File -FilePath $Log -Append -Encoding utf8
    if ($code -ne 0) { $output | Select-Object -Last 12 | ForEach-Object { Write-Host "      | $_" -ForegroundColor DarkGray } }
    return ($code -eq 0)
}
function Shortcut($path, $target, $arguments) {
    $shell = New-Object -ComObject WScript.Shell
    $link = $shell.CreateShortcut($path)
    $link.TargetPath = $target
    $link.Arguments = $arguments
    $link.WindowStyle = 7
    $link.Save()
}
function Venv-Works {
    if (-not (Test-Path $PyVenv)) { return $false }
    & $PyVenv -c "import sys" 2>$null
    return ($LASTEXITCODE -eq 0)
}

function Install-Pennello {
    if ($From) {
        if (-not (Test-Path $From -PathType Container)) { Die "$From is not a folder" @("give the folder made by ``pennello bundle export ... --out DIR --with-wheels``") }
        $script:From = (Resolve-Path $From).Path
        if (-not (Test-Path (Join-Path $From "wheels"))) { Die "$From has no wheels\ folder, so pennello cannot be installed from it without network" @("make the bundle with: pennello bundle export pennello-tiny --out DIR --with-wheels") }
    }
    New-Item -ItemType Directory -Force -Path $Data | Out-Null
    Add-Content -Path $Log -Value "=== $(Get-Date -Format s) install.ps1"
    Write-Host "Installing pennello into $Venv"
    Set-Location $env:SystemRoot  # never import a pennello source tree from the current folder

    Step "Python"
    $candidates = if ($Python) { @($Python) } else { @("py -3.13", "py -3.12", "py -3.11", "py -3.10", "python") }
    $found = $null
    foreach ($candidate in $candidates) {
        $parts = $candidate -split ' '
        try {
            & $parts[0] @($parts[1..9] | Where-Object { $_ }) -c "import sys, venv; sys.exit(sys.version_info < (3, 10))" 2>$null
            if ($LASTEXITCODE -eq 0) { $found = $parts; break }
        } catch { }
    }
    if (-not $found) { Die "no Python 3.10 or newer was found" @("install it from https://www.python.org/downloads/ (tick 'Add python.exe to PATH')", "or name one: install.ps1 -Python C:\path\to\python.exe") }
    $pyArgs = @($found[1..9] | Where-Object { $_ })
    Ok ("Python " + (& $found[0] @pyArgs -c "import sys; print(sys.version.split()[0])"))

    Step "Virtual environment"
    if (Venv-Works) { Ok "reusing $Venv (repair and upgrade)" }
    else {
        if (Test-Path $Venv) { Say "the environment in $Venv is broken; making a new one"; Remove-Item -Recurse -Force $Venv }
        $venvArgs = @("-m", "venv") + $(if ($SystemSitePackages) { @("--system-site-packages") } else { @() }) + @($Venv)
        if (-not (Run-Logged $found[0] ($pyArgs + $venvArgs))) { Die "could not create the virtual environment in $Venv" }
        Ok "created $Venv"
    }
    # As install.sh: packages go in with uv (several times faster than pip): the one on PATH, else
    # uv installed into the environment by pip from the package index; pip when neither can be
    # had, from a bundle (this script does not unpack a bundle's uv), with -SystemSitePackages
    # (uv would not see that Python's packages) and with PENNELLO_UV=0.
    $installer = $PyVenv
    $pip = @("-m", "pip", "install")
    if (-not $From -and -not $SystemSitePackages -and $env:PENNELLO_UV -ne "0") {
        $uv = if ($env:PENNELLO_UV) { $env:PENNELLO_UV } else { (Get-Command uv -ErrorAction SilentlyContinue).Source }
        $venvUv = Join-Path $Venv "Scripts\uv.exe"
        if (-not $uv -and -not (Test-Path $venvUv)) { [void](Run-Logged $PyVenv (@("-m", "pip", "install") + $PipExtra + @("uv"))) }
        if (-not $uv -and (Test-Path $venvUv)) { $uv = $venvUv }
        if ($uv) { $installer = $uv; $pip = @("pip", "install", "--python", $PyVenv); Ok "installing packages with $(& $uv --version)" }
        else { Say "note: uv could not be installed from the package index; installing with pip (slower)" }
    }
    $index = if ($From) { @("--no-index", "--find-links", (Join-Path $From "wheels")) } else { @() }

    Step "PyTorch"
    & $PyVenv -c "import torch" 2>$null
    if ($LASTEXITCODE -eq 0) { Ok "torch $(& $PyVenv -c 'import torch; print(torch.__version__)') is already installed; keeping it" }
    else {
        Say "installing torch (this can take a few minutes)"
        $version = $TorchSpec -replace '^torch==', ''
        $haveExact = (-not $From) -or (Get-ChildItem (Join-Path $From "wheels") -Filter "torch-$version*" -ErrorAction SilentlyContinue)
        $first = if ($haveExact) { $TorchSpec } else { "torch" }
        if (-not (Run-Logged $installer ($pip + $index + $PipExtra + @($first)))) {
            if ($From -or -not (Run-Logged $installer ($pip + $PipExtra + @("torch")))) {
                Die "installing torch failed" @("check the network connection, or that the bundle's wheels are for Windows and this Python")
            }
        }
        Ok "torch $(& $PyVenv -c 'import torch; print(torch.__version__)')"
    }

    Step "Pennello"
    $what = "pennello"
    if (-not $From -and $Source -ne "pypi") {
        if ($Source -ne "auto") { $what = (Resolve-Path $Source).Path }
        elseif (Test-Path (Join-Path $Here "..\pyproject.toml")) { $what = (Resolve-Path (Join-Path $Here "..")).Path }
    }
    Say "installing $what"
    if (-not (Run-Logged $installer ($pip + @("--upgrade") + $index + $PipExtra + @($what)))) { Die "installing pennello failed" @("run this again; it picks up where it stopped") }
    Ok (& $Pennello --version)
    # The CPU backend (OpenVINO, the `cpu` extra) where `nvidia-smi -L` lists no GPU, or as
    # PENNELLO_CPU_BACKEND=1|0 says; from a bundle, lock.txt already installed what it carries.
    if (-not $From) {
        $wanted = @(& $PyVenv -m pennello.installer.backend_packages | Where-Object { $_ })
        if ($LASTEXITCODE -ne 0) { Die "could not tell whether this machine needs the CPU backend (above)" @("set PENNELLO_CPU_BACKEND=1 or 0") }
        if ($wanted.Count -eq 0) { Ok "a GPU draws here: no CPU backend needed" }
        else {
            Say "no NVIDIA GPU found: adding the CPU backend ($($wanted -join ' '))"
            if (Run-Logged $installer ($pip + $PipExtra + $wanted)) { Ok "CPU backend: $($wanted -join ' ')" }
            else { Say "the CPU backend could not be installed, so pennello draws on torch (slower); details in $Log" }
        }
    }

    Step "Models"
    if ($From -and (Test-Path (Join-Path $From "manifests"))) {
        $trust = if ($TrustBundleKeys) { @("--trust-bundle-keys") } else { @() }
        if (-not (Run-Logged $Pennello (@("install", "--from", $From) + $trust))) { Die "the bundle's models were refused or are damaged" @("if it says untrusted key: check the key ids in $From\keys, then run again with -TrustBundleKeys") }
    }
    if (-not (Run-Logged $Pennello @("install", "pennello-tiny"))) { Die "the default model could not be installed" }
    if (-not (Run-Logged $Pennello @("verify"))) {
        Say "a model file was damaged; repairing it"
        if (-not ((Run-Logged $Pennello @("install", "pennello-tiny")) -and (Run-Logged $Pennello @("verify")))) { Die "a model file is damaged and could not be repaired" }
    }
    Ok "pennello-tiny installed and verified"

    Step "Start at login"
    # Same logic as install.sh: the facts, then a question that defaults to no for a new
    # registration and to keeping an existing one; no console and no answer: nothing registered.
    $registered = Test-Path $StartupLink
    $answer = if ($Autostart) { $true } elseif ($NoAutostart) { $false } else {
        if (-not $Yes) {
            Say "The tray and the daemon would start each time you log in, keeping the default"
            Say "model in memory; registered as $StartupLink (the tray's menu turns it off)."
        }
        if ($registered) { Ask "Keep starting Pennello when you log in?" $true } else { Ask "Start Pennello when you log in?" $false }
    }
    if ($answer -eq $null) {
        if ($registered) { Say "not asked (no console); start at login stays on as it was" }
        else { Say "not asked (no console), so Pennello will not start at login; to turn it on later, choose Start at login in the tray's menu, or run: install.ps1 -Autostart" }
    }
    elseif ($answer) { Shortcut $StartupLink $PyVenvW "-m pennello tray"; Ok $StartupLink }
    else { if (Test-Path $StartupLink) { Remove-Item $StartupLink }; Ok "Pennello will not start at login (the tray's menu can turn it on)" }

    Step "Menu entry"
    Shortcut $MenuLink $PyVenvW "-m pennello tray"
    Ok $MenuLink
    Say "the pennello command is $Pennello"

    Step "Start"
    if ($NoStart) { Say "not started (-NoStart); start it from the Start menu: Pennello" }
    else { Start-Process -FilePath $PyVenvW -ArgumentList "-m", "pennello", "tray" -WindowStyle Hidden; Ok "the tray is starting; its icon appears by the clock" }
    Write-Host ""; Write-Host "Pennello is installed. Uninstall with: install.ps1 uninstall" -ForegroundColor Green
}

function Uninstall-Pennello {
    $script:Steps = 4
    $dirs = @()
    if (Venv-Works) {
        $dirs = & $PyVenv -c "from pennello.paths import get_paths; p = get_paths(); print('\n'.join(map(str, (p.outputs_dir, p.runtime_dir, p.config_dir, p.data_dir, p.cache_dir, p.log_dir))))"
    }
    if (-not $dirs) {
        $pictures = Join-Path ([Environment]::GetFolderPath("MyPictures")) "Pennello"
        $dirs = @($pictures, (Join-Path $Data "run"), (Join-Path $env:LOCALAPPDATA "pennello"), $Data, (Join-Path $env:LOCALAPPDATA "pennello\Cache"), (Join-Path $env:LOCALAPPDATA "pennello\Logs"))
    }
    $outputs = $dirs[0]; $runtime = $dirs[1]
    if ($Purge) { Say "this removes pennello, its models, settings, paired devices AND your pictures in $outputs" }
    else { Say "this removes pennello, its models, settings and paired devices; your pictures in $outputs stay" }
    $answer = Ask "Continue?" $false
    if ($answer -eq $null) { Die "not removing anything without a console to ask" @("run: install.ps1 uninstall -Yes") }
    if (-not $answer) { Say "nothing removed"; return }

    Step "Stopping the tray and the daemon"
    foreach ($file in @("tray.json", "daemon.json")) {
        $path = Join-Path $runtime $file
        if (Test-Path $path) {
            $id = (Get-Content $path | ConvertFrom-Json).pid
            $process = Get-Process -Id $id -ErrorAction SilentlyContinue
            if ($process) { Stop-Process -Id $id; $process.WaitForExit(60000) | Out-Null; Ok "stopped $($file -replace '\.json$','') (pid $id)" }
        }
    }
    Step "Start at login and menu entry"
    foreach ($path in @($StartupLink, $MenuLink)) { if (Test-Path $path) { Remove-Item -Force $path; Ok "removed $path" } }
    Step "Environment, models, settings"
    if (Test-Path $Venv) { Remove-Item -Recurse -Force $Venv; Ok "removed $Venv" }
    foreach ($dir in $dirs[1..($dirs.Count - 1)]) {
        if (-not (Test-Path $dir) -or $dir -eq $outputs) { continue }
        if ($outputs.StartsWith($dir + [IO.Path]::DirectorySeparatorChar)) { Say "kept $dir: it holds your outputs folder"; continue }
        Remove-Item -Recurse -Force $dir; Ok "removed $dir"
    }
    Step "Your pictures"
    if ($Purge) { if (Test-Path $outputs) { Remove-Item -Recurse -Force $outputs; Ok "removed $outputs" } }
    else { Ok "kept $outputs" }
    Write-Host ""; Write-Host "Pennello is uninstalled." -ForegroundColor Green
}

if ($Action -eq "uninstall") { Uninstall-Pennello } else { Install-Pennello }
