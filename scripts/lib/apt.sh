# Sourced by the scripts that install Debian packages: the project's apt conventions.
# Expects a `log` function. Root runs apt directly, anyone else through sudo; another
# apt/dpkg holding the lock is waited for rather than failed on; a command that fails
# for want of package lists (a fresh machine, or a superseded package gone from the
# mirror) is retried once after `apt-get update`.
if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q -o DPkg::Lock::Timeout=900)

updated=0
apt_update() {
    if [[ $updated -eq 0 ]]; then
        log "apt-get update"
        "${sudo[@]}" apt-get "${apt_opts[@]}" update >&2
        updated=1
    fi
}

# Runs "$@"; on failure refreshes the package lists (once per script) and runs it again.
with_update() {
    if "$@"; then return 0; fi
    [[ $updated -eq 0 ]] || return 1
    apt_update
    "$@"
}

is_installed() {
    dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

# Installs the packages named that are not installed yet.
apt_install_missing() {
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    log "installing ${missing[*]}"
    with_update "${sudo[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" >&2
}
