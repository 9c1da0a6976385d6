# Sourced by the scripts that install Debian packages: the project's apt conventions.
# Expects a `log` function. Root runs apt directly, anyone else through sudo; another
# apt/dpkg holding the lock is waited for rather than failed on. The package lists are
# refreshed (once per script) before anything is installed: a new machine's lists are
# stale and offer old versions (rustc-web 1.85 where the workspace needs 1.87); a
# download that still fails (a superseded package gone from the mirror) is retried once
# after `apt-get update`.
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
    apt_update
    log "installing ${missing[*]}"
    "${sudo[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" >&2
}

# The versioned kernel package a metapackage stands for (linux-image-amd64 ->
# linux-image-6.1.0-NN-amd64), refreshing stale package lists once if need be.
kernel_package() {
    local meta=$1 resolve pkg
    resolve() {
        apt-cache depends "$meta" 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1
    }
    pkg=$(resolve || true)
    if [[ -z $pkg ]]; then
        apt_update
        pkg=$(resolve || true)
    fi
    [[ -n $pkg ]] || { log "cannot resolve $meta to a kernel package"; return 1; }
    echo "$pkg"
}

# Downloads package $1 and unpacks it into directory $2 (dpkg-deb -x), once: a marker
# file says it is complete, so an interrupted unpack is redone.
unpack_package() {
    local pkg=$1 dir=$2 cache deb
    [[ -f $dir/.unpacked ]] && return 0
    cache=$(dirname "$dir")
    mkdir -p "$cache"
    rm -rf "$dir" "$dir.tmp" "$cache/${pkg}"_*.deb
    log "downloading $pkg"
    # apt-get download writes into the current directory; as root it warns that user
    # _apt cannot write there: harmless, silenced by downloading as root.
    download() { (cd "$cache" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2); }
    with_update download
    deb=$(ls "$cache/${pkg}"_*.deb)
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
    rm -f "$deb"
    touch "$dir/.unpacked"
    log "unpacked $pkg into $dir"
}

# Version of installed package $1 (empty when it is not installed).
installed_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true
}

# Makes sure packages "${@:3}" are installed at version $2 or later, judged by package $1:
# refreshes the lists and upgrades them when the installed one is older.
apt_require_version() {
    local probe=$1 want=$2 have
    shift 2
    have=$(installed_version "$probe")
    if [[ -n $have ]] && dpkg --compare-versions "$have" ge "$want"; then return 0; fi
    apt_update
    log "installing $* (want $probe >= $want, have ${have:-none})"
    "${sudo[@]}" apt-get "${apt_opts[@]}" install --no-install-recommends "$@" >&2
    have=$(installed_version "$probe")
    if [[ -z $have ]] || ! dpkg --compare-versions "$have" ge "$want"; then
        log "$probe ${have:-(not installed)} is older than $want even after apt-get update"
        return 1
    fi
}
