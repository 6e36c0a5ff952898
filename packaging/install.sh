#!/usr/bin/env bash
# Pennello one-click installer for Linux and macOS. Safe to run again: it repairs and upgrades.
#
#   bash install.sh                      install (asks before registering start at login; without a
#                                        terminal it does not register it and says how to later)
#   bash install.sh --yes                install without questions (start at login included)
#   bash install.sh --from BUNDLE        air-gapped: everything from a bundle, no network at all
#   bash install.sh uninstall [--purge]  remove pennello (your pictures stay unless --purge)
#
# What it does: a virtual environment in pennello's data folder, torch, pennello (from this
# checkout, from PyPI, or from BUNDLE/wheels with --no-index), the default model (installed
# and verified), start at login (XDG autostart + the systemd user unit on Linux, a LaunchAgent
# on macOS), a menu entry, a `pennello` command in ~/.local/bin, and then the tray.
# Packages are installed with uv: the one on PATH, else the uv wheel a bundle carries (checked
# against its lock.txt), else uv installed into the environment by pip from the package index;
# several times faster than pip. Otherwise, and with --system-site-packages (uv would not see the
# chosen Python's packages), with pip.
#
# Environment:
#   PENNELLO_VENV       where the virtual environment goes (default: DATA/venv)
#   PENNELLO_TORCH      the torch requirement tried first (default: torch==2.13.0, the CPU build
#                       the project tests with; when it is not available, plain `torch`)
#   PENNELLO_PIP_ARGS   extra arguments for every `pip install` / `uv pip install` (e.g.
#                       --no-build-isolation, --find-links DIR), word-split
#   PENNELLO_UV         the uv to install packages with, or 0 to use pip only (default: uv on
#                       PATH, else the bundle's uv wheel with --from, else uv from the package
#                       index, else pip)
#   PENNELLO_CPU_BACKEND  1 or 0: add the CPU backend (OpenVINO) or not (default: added when
#                       `nvidia-smi -L` lists no GPU, except on Apple silicon)
#   PENNELLO_HOME       relocates all of pennello's state (as for pennello itself)
#   PENNELLO_ASSUME_YES=1  as --yes (as for pennello itself)
# Bash 3.2 compatible (macOS's /bin/bash).
set -euo pipefail

PROG=install.sh
ARGS="$*"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ACTION=install FROM="" YES=0 START=1 AUTOSTART=ask PYTHON="" SYSTEM_SITE=0 SOURCE=auto TRUST_KEYS=0 PURGE=0
case "${PENNELLO_ASSUME_YES:-}" in 1|[Tt]rue|[Yy]es|[Oo]n) YES=1 ;; esac
TORCH_SPEC=${PENNELLO_TORCH:-torch==2.13.0}
PIP_EXTRA=${PENNELLO_PIP_ARGS:-}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

usage() {
    sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --from BUNDLE           install pennello, torch and the models from a bundle made with
                          `pennello bundle export MODEL... --out BUNDLE --with-wheels` (no network)
  --trust-bundle-keys     with --from: trust the bundle's keys/*.pub (their ids are printed)
  --source DIR|pypi       install pennello from this checkout / from PyPI (default: the checkout
                          this script is in, if any, else PyPI)
  --python PY             the Python (3.10+) to build the environment with
  --system-site-packages  let the environment use PY's packages (e.g. a system torch with CUDA)
  --yes, -y               answer yes to every question (start at login included)
  --autostart / --no-autostart   register / do not register start at login, without asking
  --no-start              do not start the tray at the end
  --purge                 with uninstall: remove the pictures in the outputs folder too
EOF
}

# --- messages ----------------------------------------------------------------------------------
STEP=0 STEPS=8
if [ -t 1 ]; then BOLD=$(printf '\033[1m') RED=$(printf '\033[31m') GREEN=$(printf '\033[32m') DIM=$(printf '\033[2m') RESET=$(printf '\033[0m')
else BOLD="" RED="" GREEN="" DIM="" RESET=""; fi
step() { STEP=$((STEP + 1)); printf '\n%s[%d/%d] %s%s\n' "$BOLD" "$STEP" "$STEPS" "$1" "$RESET"; }
say() { printf '      %s\n' "$*"; }
ok() { printf '      %s✓%s %s\n' "$GREEN" "$RESET" "$*"; }
die() {  # die WHAT [WHAT-TO-DO...]
    printf '\n%serror:%s %s\n' "$RED" "$RESET" "$1" >&2
    shift
    for line in "$@"; do printf '  → %s\n' "$line" >&2; done
    [ -n "${LOG:-}" ] && [ -f "$LOG" ] && printf '  (details: %s)\n' "$LOG" >&2
    exit 1
}
ask() {  # ask QUESTION DEFAULT(y|n): returns 0 for yes
    [ "$YES" = 1 ] && return 0
    if [ ! -t 0 ]; then return 2; fi
    local answer hint="[Y/n]"; [ "$2" = n ] && hint="[y/N]"
    printf '      %s %s ' "$1" "$hint"
    read -r answer || answer=""
    case "${answer:-$2}" in [Yy]*) return 0 ;; *) return 1 ;; esac
}
run_logged() {  # run_logged DESCRIPTION CMD...: output goes to the log; its tail is shown on failure
    printf '\n$ %s\n' "${*:2}" >>"$LOG"
    if ! "${@:2}" >>"$LOG" 2>&1; then
        printf '%s' "$DIM" >&2; tail -n 12 "$LOG" | sed 's/^/      | /' >&2; printf '%s' "$RESET" >&2
        return 1
    fi
}

# --- options -------------------------------------------------------------------------------------
while [ $# -gt 0 ]; do
    case "$1" in
        install|uninstall) ACTION=$1 ;;
        --from) [ $# -ge 2 ] || die "--from needs a bundle directory"; FROM=$2; shift ;;
        --from=*) FROM=${1#--from=} ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory or 'pypi'"; SOURCE=$2; shift ;;
        --source=*) SOURCE=${1#--source=} ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#--python=} ;;
        --system-site-packages) SYSTEM_SITE=1 ;;
        --trust-bundle-keys) TRUST_KEYS=1 ;;
        --yes|-y) YES=1 ;;
        --autostart) AUTOSTART=yes ;;
        --no-autostart) AUTOSTART=no ;;
        --no-start) START=0 ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option: $1" "see: bash $PROG --help" ;;
    esac
    shift
done

# Paths given relative to where we were started; then leave it, so that `python -c` never
# imports a pennello source tree from the current directory instead of the installed one.
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
[ -n "$FROM" ] && FROM=$(absolute "$FROM")
case "$SOURCE" in auto|pypi) ;; *) SOURCE=$(absolute "$SOURCE") ;; esac
case "$PYTHON" in */*) PYTHON=$(absolute "$PYTHON") ;; esac
cd /

# --- where things go (the same places pennello.paths uses) ---------------------------------------
OS=$(uname -s)
case "$OS" in
    Linux|Darwin) ;;
    *) die "this installer is for Linux and macOS; on Windows run packaging\\install.ps1" ;;
esac
if [ -n "${PENNELLO_HOME:-}" ]; then DATA=$PENNELLO_HOME/data
elif [ "$OS" = Darwin ]; then DATA="$HOME/Library/Application Support/pennello"
else DATA=${XDG_DATA_HOME:-$HOME/.local/share}/pennello; fi
VENV=${PENNELLO_VENV:-$DATA/venv}
PY_VENV=$VENV/bin/python
PENNELLO=$VENV/bin/pennello
BIN_LINK=$HOME/.local/bin/pennello
APPS=${XDG_DATA_HOME:-$HOME/.local/share}/applications
ICON=${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/256x256/apps/pennello.png
UNIT_DIR=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user
MAC_APP=$HOME/Applications/Pennello.app

venv_works() { [ -x "$PY_VENV" ] && "$PY_VENV" -c 'import sys' >/dev/null 2>&1; }
systemctl_user() { command -v systemctl >/dev/null 2>&1 && systemctl --user "$@" >/dev/null 2>&1; }

# =================================================================================================
install() {
    mkdir -p "$DATA"
    LOG=$DATA/install.log
    printf '=== %s install.sh %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$ARGS" >>"$LOG"
    if [ -n "$FROM" ]; then
        [ -d "$FROM" ] || die "$FROM is not a directory" "give the folder made by \`pennello bundle export ... --out DIR --with-wheels\`"
        [ -d "$FROM/wheels" ] || die "$FROM has no wheels/ folder, so pennello cannot be installed from it without network" \
            "make the bundle with: pennello bundle export pennello-tiny --out DIR --with-wheels"
        [ -f "$FROM/lock.txt" ] || die "$FROM has no lock.txt, so its wheels cannot be checked by hash" \
            "make the bundle with: pennello bundle export pennello-tiny --out DIR --with-wheels"
    fi
    printf '%sInstalling pennello%s into %s\n' "$BOLD" "$RESET" "$VENV"
    [ -n "$FROM" ] && printf 'from the bundle %s, without network\n' "$FROM"

    step "Python"
    local candidates="$PYTHON" found="" py
    [ -z "$PYTHON" ] && candidates="python3.13 python3.12 python3.11 python3.10 python3"
    for py in $candidates; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            found=$(command -v "$py"); break
        fi
    done
    [ -n "$found" ] || die "no Python 3.10 or newer with the venv module was found${PYTHON:+ (tried $PYTHON)}" \
        "Debian/Ubuntu: sudo apt install python3 python3-venv python3-tk" \
        "Fedora: sudo dnf install python3 python3-tkinter" \
        "macOS: install Python from python.org (it includes Tk), then run this again" \
        "or name one: bash $PROG --python /path/to/python3"
    ok "$("$found" -c 'import sys; print(f"Python {sys.version.split()[0]}")') ($found)"
    "$found" -c 'import tkinter' 2>/dev/null \
        || say "note: this Python has no Tk, so the quick-generate window will not open (Debian/Ubuntu: sudo apt install python3-tk)"

    step "Virtual environment"
    find_uv
    if venv_works; then
        ok "reusing $VENV (repair and upgrade)"
        if [ "$SYSTEM_SITE" = 1 ] && ! grep -q 'include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
            sed -i.bak 's/^include-system-site-packages = .*/include-system-site-packages = true/' "$VENV/pyvenv.cfg" && rm -f "$VENV/pyvenv.cfg.bak"
            ok "now sees $found's packages"
        fi
    else
        [ -e "$VENV" ] && { say "the environment in $VENV is broken (was its Python removed?); making a new one"; rm -rf "$VENV"; }
        local venv_args=""; [ "$SYSTEM_SITE" = 1 ] && venv_args="--system-site-packages"
        # uv needs no pip inside the environment, and seeding pip is most of a new venv's time.
        [ -n "$UV" ] && venv_args="$venv_args --without-pip"
        run_logged "venv" "$found" -m venv $venv_args "$VENV" \
            || die "could not create the virtual environment in $VENV" \
                   "Debian/Ubuntu: sudo apt install python3-venv, then run this again"
        ok "created $VENV"
    fi
    fetch_uv
    local index_args=()
    if [ -n "$UV" ]; then
        PIP=("$UV" pip install --python "$PY_VENV")
        # --offline: uv never asks the network, not even to refresh its cache.
        [ -n "$FROM" ] && index_args=(--offline --no-index --find-links "$FROM/wheels" --require-hashes -r "$FROM/lock.txt")
        ok "installing packages with $("$UV" --version)"
    else
        ensure_pip
        PIP=("$PY_VENV" -m pip install)
        [ -n "$FROM" ] && index_args=(--no-index --find-links "$FROM/wheels" --require-hashes -r "$FROM/lock.txt")
    fi
    # shellcheck disable=SC2206
    local extra=($PIP_EXTRA)

    step "PyTorch"
    local have_torch
    # One import both checks and names it: importing torch takes seconds, most of a re-run's time.
    if have_torch=$("$PY_VENV" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
        ok "torch $have_torch is already installed; keeping it"
    elif [ -n "$FROM" ]; then
        ls "$FROM/wheels/" | grep -q '^torch-' || die "$FROM/wheels holds no torch wheel" \
            "export the bundle on a machine with network, for this platform: pennello bundle export ... --with-wheels --platform TAG --python-version X.Y"
        # In hash-checking mode every requirement comes from lock.txt, so torch comes with the rest.
        say "installing torch and the other wheels lock.txt pins from the bundle (this can take a few minutes)"
        run_logged "torch" "${PIP[@]}" "${index_args[@]}" ${extra[@]+"${extra[@]}"} \
            || die "installing the bundle's wheels from $FROM/wheels failed" "check the bundle's wheels match this machine (python $("$PY_VENV" -c 'import sys; print("%d.%d" % sys.version_info[:2])'), $(uname -m))"
        ok "torch $("$PY_VENV" -c 'import torch; print(torch.__version__)')"
    else
        say "installing $TORCH_SPEC (this can take a few minutes)"
        # uv does not read pip's configuration: a local wheel folder pip is set up with
        # (find-links, e.g. for torch) is passed on, so uv finds the same torch pip would.
        local links="" dir
        [ -n "$UV" ] && links=$("$found" -m pip config get global.find-links 2>/dev/null || true)
        for dir in $links; do extra+=(--find-links "$dir"); done
        if ! run_logged "torch" "${PIP[@]}" ${extra[@]+"${extra[@]}"} "$TORCH_SPEC"; then
            say "$TORCH_SPEC is not available here; installing the newest torch for this machine"
            run_logged "torch" "${PIP[@]}" ${extra[@]+"${extra[@]}"} torch \
                || die "installing torch failed" "check the network connection to PyPI, then run this again" \
                       "or install from a bundle: bash $PROG --from BUNDLE"
        fi
        ok "torch $("$PY_VENV" -c 'import torch; print(torch.__version__)')"
    fi

    step "Pennello"
    local what=()
    if [ -n "$FROM" ]; then
        what=()  # pennello is in lock.txt (index_args)
    elif [ "$SOURCE" = pypi ]; then
        what=(pennello)
    elif [ "$SOURCE" != auto ]; then
        [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not a pennello checkout (no pyproject.toml)"
        what=("$(cd "$SOURCE" && pwd)")
    elif [ -f "$HERE/../pyproject.toml" ] && grep -q '^name = "pennello"' "$HERE/../pyproject.toml"; then
        what=("$(cd "$HERE/.." && pwd)")
    else
        what=(pennello)
    fi
    say "installing ${what[*]:-pennello} ${FROM:+from the bundle, every wheel checked against lock.txt}"
    run_logged "pennello" "${PIP[@]}" --upgrade ${index_args[@]+"${index_args[@]}"} ${extra[@]+"${extra[@]}"} ${what[@]+"${what[@]}"} \
        || die "installing pennello failed" \
               "${FROM:+the bundle may lack a dependency wheel for this platform; re-export it with --with-wheels on a machine like this one}" \
               "run this again; it picks up where it stopped"
    local version
    version=$("$PENNELLO" --version 2>/dev/null) \
        || die "pennello was installed but does not run" "run: $PENNELLO --version, and report what it prints"
    ok "$version"
    if [ -z "$FROM" ]; then cpu_backend; fi  # from a bundle, lock.txt installed the CPU backend it carries

    step "Models"
    if [ -n "$FROM" ] && [ -d "$FROM/manifests" ]; then
        local trust=""; [ "$TRUST_KEYS" = 1 ] && trust=--trust-bundle-keys
        run_logged "bundle models" "$PENNELLO" install --from "$FROM" $trust \
            || die "the bundle's models were refused or are damaged" \
                   "if it says untrusted key: check the key ids in $FROM/keys against your publisher's, then run again with --trust-bundle-keys"
        ok "installed the bundle's models"
    fi
    run_logged "default model" "$PENNELLO" install pennello-tiny \
        || die "the default model could not be installed" "run: $PENNELLO install pennello-tiny"
    if ! run_logged "verify" "$PENNELLO" verify; then
        say "a model file was damaged; repairing it"
        { [ -z "$FROM" ] || [ ! -d "$FROM/manifests" ] || run_logged "repair" "$PENNELLO" install --from "$FROM"; } \
            && run_logged "repair" "$PENNELLO" install pennello-tiny && run_logged "verify" "$PENNELLO" verify \
            || die "a model file is damaged and could not be repaired" "run: $PENNELLO verify, then $PENNELLO install NAME for each damaged model"
    fi
    ok "pennello-tiny installed and verified (every file re-hashed)"

    step "Start at login"
    # A new registration defaults to no (Enter declines); an existing one to keeping it.
    local registered=0 question="Start Pennello when you log in?" default=n where
    "$PY_VENV" -c 'from pennello.tray import login_item; raise SystemExit(0 if login_item().enabled() else 1)' 2>/dev/null \
        && registered=1 && question="Keep starting Pennello when you log in?" && default=y
    where=$("$PY_VENV" -c 'from pennello.tray import login_item; print(login_item().path)' 2>/dev/null || echo "a login item")
    local answer=0
    case "$AUTOSTART" in
        yes) answer=0 ;;
        no) answer=1 ;;
        ask)
            # The facts first (consent, issue 8): what starts, what it costs, what is written.
            if [ "$YES" != 1 ] && [ -t 0 ]; then
                say "The tray and the daemon would start each time you log in, keeping the default"
                say "model in memory; registered in $where (the tray's menu turns it off)."
            fi
            ask "$question" "$default" || answer=$? ;;
    esac
    if [ "$answer" = 2 ]; then
        if [ "$registered" = 1 ]; then say "not asked (no terminal); start at login stays on as it was"
        else say "not asked (no terminal), so Pennello will not start at login; to turn it on later," \
                 "choose Start at login in the tray's menu, or run: bash $PROG --autostart"; fi
    elif [ "$answer" = 0 ]; then
        install_unit
        run_logged "autostart" "$PY_VENV" -c 'from pennello.tray import login_item; login_item().enable()' \
            || die "could not register start at login"
        if [ "$OS" = Darwin ]; then ok "LaunchAgent ~/Library/LaunchAgents/org.pennello.tray.plist"
        else ok "autostart entry ${XDG_CONFIG_HOME:-$HOME/.config}/autostart/pennello.desktop"; fi
    else
        [ "$registered" = 1 ] && "$PY_VENV" -c 'from pennello.tray import login_item; login_item().disable()'
        ok "Pennello will not start at login (the tray's menu can turn it on)"
    fi

    step "Menu entry and command"
    if [ "$OS" = Darwin ]; then
        mkdir -p "$MAC_APP/Contents/MacOS" "$MAC_APP/Contents/Resources"
        printf '#!/bin/sh\nexec "%s" tray\n' "$PENNELLO" >"$MAC_APP/Contents/MacOS/Pennello"
        chmod +x "$MAC_APP/Contents/MacOS/Pennello"
        cat >"$MAC_APP/Contents/Info.plist" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0"><dict>
<key>CFBundleName</key><string>Pennello</string><key>CFBundleIdentifier</key><string>org.pennello.tray</string>
<key>CFBundleExecutable</key><string>Pennello</string><key>LSUIElement</key><true/>
</dict></plist>
EOF
        ok "$MAC_APP"
    else
        mkdir -p "$APPS" "$(dirname "$ICON")"
        "$PY_VENV" -m pennello.tray._icon "$ICON" 256
        "$PY_VENV" -c 'import sys; from pennello.tray import desktop_entry; from pennello.tray._autostart import tray_command; sys.stdout.write(desktop_entry(tray_command()))' >"$APPS/pennello.desktop"
        command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$APPS" >/dev/null 2>&1 || true
        ok "$APPS/pennello.desktop"
    fi
    mkdir -p "$(dirname "$BIN_LINK")"
    if [ -e "$BIN_LINK" ] && [ ! -L "$BIN_LINK" ]; then
        say "note: $BIN_LINK exists and is not ours; left alone (pennello is $PENNELLO)"
    else
        ln -sfn "$PENNELLO" "$BIN_LINK"
        ok "command: $BIN_LINK"
        case ":$PATH:" in *":$HOME/.local/bin:"*) ;; *) say "add ~/.local/bin to your PATH to type \`pennello\` anywhere" ;; esac
    fi

    step "Start"
    if [ "$START" = 0 ]; then
        say "not started (--no-start); start it with: $PENNELLO tray"
    elif [ "$OS" = Linux ] && [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
        say "no desktop session here; start the tray from your desktop's menu, or run: $PENNELLO serve"
    else
        nohup "$PENNELLO" tray >/dev/null 2>&1 &
        say "starting the tray and the daemon (the first start loads the model)…"
        local i=0
        while [ $i -lt 120 ] && ! "$PENNELLO" status >/dev/null 2>&1; do sleep 1; i=$((i + 1)); done
        if "$PENNELLO" status >/dev/null 2>&1; then ok "$("$PENNELLO" status | head -n 1)"
        else say "still starting; its icon turns green when it is ready (\`pennello status\` tells)"; fi
    fi

    printf '\n%sPennello is installed.%s Uninstall with: bash %s uninstall\n' "$GREEN" "$RESET" "$HERE/$PROG"
}

cpu_backend() {  # OpenVINO (the `cpu` extra) where no NVIDIA GPU is found; PENNELLO_CPU_BACKEND=1|0 decides instead
    local wanted
    wanted=$("$PY_VENV" -m pennello.installer.backend_packages) \
        || die "could not tell whether this machine needs the CPU backend (above)" "set PENNELLO_CPU_BACKEND=1 or 0"
    if [ -z "$wanted" ]; then ok "a GPU draws here: no CPU backend needed"; return 0; fi
    say "no NVIDIA GPU found: adding the CPU backend ($(echo $wanted))"
    # shellcheck disable=SC2086  # one requirement per word
    if run_logged "cpu backend" "${PIP[@]}" ${extra[@]+"${extra[@]}"} $wanted; then ok "CPU backend: $(echo $wanted)"
    else say "the CPU backend could not be installed, so pennello draws on torch (slower); details in $LOG"; fi
}

uv_wanted() { [ "${PENNELLO_UV:-}" != 0 ] && [ "$SYSTEM_SITE" != 1 ]; }

find_uv() {  # sets UV to a uv at hand, or "" (then fetch_uv may get one from the index, else pip)
    UV=""
    uv_wanted || return 0
    if [ -n "${PENNELLO_UV:-}" ]; then UV=$PENNELLO_UV
    elif command -v uv >/dev/null 2>&1; then UV=$(command -v uv)
    elif venv_works && "$VENV/bin/uv" --version >/dev/null 2>&1; then UV=$VENV/bin/uv  # an earlier run fetched it
    elif [ -n "$FROM" ]; then unpack_uv
    fi
    if [ -n "$UV" ] && ! "$UV" --version >/dev/null 2>&1; then
        say "note: $UV does not run here; installing with pip"
        UV=""
    fi
}

fetch_uv() {  # no uv yet and a package index to ask: pip installs uv into the environment first
    # uv then installs torch and pennello several times faster than pip would; pip stays the
    # fallback when the index (or PENNELLO_PIP_ARGS' --find-links) has no uv for this machine.
    [ -z "$UV" ] && [ -z "$FROM" ] && uv_wanted || return 0
    ensure_pip
    printf '\n$ pip install uv\n' >>"$LOG"
    # shellcheck disable=SC2086
    if "$PY_VENV" -m pip install $PIP_EXTRA uv >>"$LOG" 2>&1 && "$VENV/bin/uv" --version >/dev/null 2>&1; then
        UV=$VENV/bin/uv
    else
        say "note: uv could not be installed from the package index; installing with pip (slower)"
    fi
}

ensure_pip() {
    "$PY_VENV" -m pip --version >/dev/null 2>&1 || run_logged "ensurepip" "$PY_VENV" -m ensurepip --upgrade \
        || die "the environment has no pip" "Debian/Ubuntu: sudo apt install python3-venv python3-pip"
}

unpack_uv() {  # the uv binary out of the bundle's uv wheel, once its sha256 is in lock.txt
    local wheel dest=$DATA/uv
    for wheel in "$FROM"/wheels/uv-*.whl; do
        [ -f "$wheel" ] && [ -f "$FROM/lock.txt" ] || continue
        # lock.txt is what bundle.json signs and the admin checks: a wheel it does not pin is not run.
        "$found" - "$wheel" "$dest" "$FROM/lock.txt" >>"$LOG" 2>&1 <<'EOF' || continue
import hashlib, os, shutil, sys, zipfile
wheel, dest, lock = sys.argv[1:]
with open(wheel, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
if f"--hash=sha256:{digest}" not in open(lock, encoding="utf-8").read():
    sys.exit(f"{wheel}: sha256 {digest} is not in {lock}; not used")
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
    with z.open(member) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
EOF
        "$dest" --version >/dev/null 2>&1 && { UV=$dest; return 0; }
    done
}

install_unit() {  # the systemd user unit (written by packaging/systemd/), when this platform has one
    [ "$OS" = Linux ] || return 0
    local unit="$HERE/systemd/pennello.service"
    if [ ! -f "$unit" ]; then
        say "no systemd unit beside the installer; the tray starts the daemon at login"
        return 0
    fi
    mkdir -p "$UNIT_DIR"
    # Point ExecStart at this venv's pennello (the unit's default is ~/.local/bin/pennello, which
    # may be someone else's); quoted for systemd when the path has spaces.
    local exe=$PENNELLO; case "$exe" in *" "*) exe="\"$exe\"" ;; esac
    sed -e "s|%h/\.local/bin/pennello|$exe|g" -e "s|@PENNELLO@|$exe|g" -e "s|@VENV@|$VENV|g" "$unit" >"$UNIT_DIR/pennello.service"
    if systemctl_user daemon-reload; then ok "systemd user unit $UNIT_DIR/pennello.service"
    else say "installed $UNIT_DIR/pennello.service (systemd --user is not running here; it is used from your next login)"; fi
}

# =================================================================================================
uninstall() {
    LOG=""
    STEPS=4
    # Ask pennello where its state is (PENNELLO_HOME and platform rules included); fall back to
    # the defaults when the environment is broken.
    local dirs=""
    if venv_works; then
        dirs=$("$PY_VENV" -c 'from pennello.paths import get_paths
p = get_paths()
print("\n".join(map(str, (p.outputs_dir, p.runtime_dir, p.config_dir, p.data_dir, p.cache_dir, p.log_dir))))' 2>/dev/null || true)
    fi
    if [ -z "$dirs" ]; then
        local state=${XDG_STATE_HOME:-$HOME/.local/state}/pennello
        if [ -n "${PENNELLO_HOME:-}" ]; then
            dirs=$(printf '%s\n' "$PENNELLO_HOME/outputs" "$PENNELLO_HOME/run" "$PENNELLO_HOME/config" "$PENNELLO_HOME/data" "$PENNELLO_HOME/cache" "$PENNELLO_HOME/logs")
        elif [ "$OS" = Darwin ]; then
            dirs=$(printf '%s\n' "$HOME/Pictures/Pennello" "$HOME/Library/Application Support/pennello/run" "$HOME/Library/Application Support/pennello" "$DATA" "$HOME/Library/Caches/pennello" "$HOME/Library/Logs/pennello")
        else
            dirs=$(printf '%s\n' "$HOME/Pictures/Pennello" "$state/run" "${XDG_CONFIG_HOME:-$HOME/.config}/pennello" "$DATA" "${XDG_CACHE_HOME:-$HOME/.cache}/pennello" "$state/log")
        fi
    fi
    local outputs runtime
    outputs=$(printf '%s\n' "$dirs" | sed -n 1p)
    runtime=$(printf '%s\n' "$dirs" | sed -n 2p)

    printf '%sUninstalling pennello%s\n' "$BOLD" "$RESET"
    if [ "$PURGE" = 1 ]; then say "this removes pennello, its models, settings, paired devices AND your pictures in $outputs"
    else say "this removes pennello, its models, settings and paired devices; your pictures in $outputs stay"; fi
    local answer=0
    ask "Continue?" n || answer=$?
    [ "$answer" = 2 ] && die "not removing anything without a terminal to ask" "run: bash $PROG uninstall --yes"
    [ "$answer" = 0 ] || { say "nothing removed"; exit 0; }

    step "Stopping the tray and the daemon"
    local file pid
    for file in tray.json daemon.json; do
        pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$runtime/$file" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            local i=0
            while [ $i -lt 60 ] && kill -0 "$pid" 2>/dev/null; do sleep 1; i=$((i + 1)); done
            ok "stopped ${file%.json} (pid $pid)"
        fi
    done
    systemctl_user disable --now pennello.service && ok "stopped and disabled the systemd user unit" || true

    step "Start at login, menu entry, command"
    local path
    for path in "${XDG_CONFIG_HOME:-$HOME/.config}/autostart/pennello.desktop" "$UNIT_DIR/pennello.service" \
                "$HOME/Library/LaunchAgents/org.pennello.tray.plist" "$APPS/pennello.desktop" "$ICON"; do
        if [ -e "$path" ]; then
            [ "${path##*.}" = plist ] && command -v launchctl >/dev/null 2>&1 && launchctl unload "$path" 2>/dev/null || true
            rm -f "$path" && ok "removed $path"
        fi
    done
    [ -d "$MAC_APP" ] && rm -rf "$MAC_APP" && ok "removed $MAC_APP"
    # desktop-file-utils keeps an index of the menu entries (mimeinfo.cache, shared with other
    # applications): refreshed so it no longer lists pennello, not removed.
    if [ -d "$APPS" ] && command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database "$APPS" >/dev/null 2>&1 || true
    fi
    if [ -L "$BIN_LINK" ]; then
        case "$(readlink "$BIN_LINK")" in "$VENV"/*) rm -f "$BIN_LINK" && ok "removed $BIN_LINK" ;; esac
    fi
    systemctl_user daemon-reload || true

    step "Environment, models, settings"
    [ -d "$VENV" ] && rm -rf "$VENV" && ok "removed $VENV"
    local dir
    while IFS= read -r dir; do
        [ -n "$dir" ] && [ -e "$dir" ] || continue
        [ "$dir" = "$outputs" ] && continue
        case "$outputs/" in "$dir"/*)
            say "kept $dir: it holds your outputs folder"; continue ;;
        esac
        rm -rf "$dir" && ok "removed $dir"
    done <<EOF
$(printf '%s\n' "$dirs" | sed 1d)
EOF
    # Empty parents named pennello (e.g. ~/.local/state/pennello after run/ and log/) and PENNELLO_HOME.
    for dir in "${XDG_STATE_HOME:-$HOME/.local/state}/pennello" "${PENNELLO_HOME:-}"; do
        [ -n "$dir" ] && [ -d "$dir" ] && rmdir "$dir" 2>/dev/null || true
    done

    step "Your pictures"
    if [ "$PURGE" = 1 ]; then
        [ -d "$outputs" ] && rm -rf "$outputs" && ok "removed $outputs"
        [ -n "${PENNELLO_HOME:-}" ] && rmdir "$PENNELLO_HOME" 2>/dev/null || true
    else
        ok "kept $outputs"
    fi
    printf '\n%sPennello is uninstalled.%s\n' "$GREEN" "$RESET"
}

if [ "$ACTION" = uninstall ]; then uninstall; else install; fi
