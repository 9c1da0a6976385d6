# shellcheck shell=bash
# Kernel module helpers for building initramfs images (sourced by bash scripts).
# Same approach as scripts/sandbox.sh: Debian's kernel packages ship no modules.dep
# (depmod runs at install time), so dependencies come from each module's .modinfo
# section (depends=) and built-in modules from modules.builtin.

# kmod_cat FILE: writes a module uncompressed to stdout (busybox insmod may not
# decompress).
kmod_cat() {
    case $1 in
        *.xz) xz -dc "$1" ;;
        *.zst) zstd -dc "$1" ;;
        *.gz) gzip -dc "$1" ;;
        *) cat "$1" ;;
    esac
}

# kmod_deps FILE: the module's dependencies (depends= of .modinfo), space separated.
kmod_deps() {
    kmod_cat "$1" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

# kmod_resolve MODDIR NAME...: prints "name path" for NAME... and their dependencies,
# dependencies first (load order). MODDIR is lib/modules/VERSION. Modules built into the
# kernel (modules.builtin) are skipped, with a note on stderr; an unknown name fails.
# '-' and '_' are equivalent in names, as for modprobe.
kmod_resolve() {
    local moddir=$1 f n
    shift
    declare -A _kmod_file=() _kmod_seen=()
    local _kmod_order=()
    while IFS= read -r f; do
        n=${f##*/}; n=${n%%.ko*}; _kmod_file[${n//-/_}]=$f
    done < <(find "$moddir/kernel" -name '*.ko*' 2>/dev/null)
    _kmod_visit() {
        local m=${1//-/_} d
        [[ -z ${_kmod_seen[$m]:-} ]] || return 0
        _kmod_seen[$m]=1
        if [[ -z ${_kmod_file[$m]:-} ]]; then
            if [[ -f $moddir/modules.builtin ]] &&
                grep -q "/${m}.ko\$\|/${m//_/-}.ko\$" "$moddir/modules.builtin"; then
                echo "kmod: $m is built into the kernel, skipped" >&2
                return 0
            fi
            echo "kmod: module $m not found in $moddir" >&2
            return 1
        fi
        for d in $(kmod_deps "${_kmod_file[$m]}"); do _kmod_visit "$d" || return 1; done
        _kmod_order+=("$m")
    }
    for n in "$@"; do _kmod_visit "$n" || return 1; done
    for n in "${_kmod_order[@]}"; do echo "$n ${_kmod_file[$n]}"; done
}
