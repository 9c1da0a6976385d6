# Sourced by scripts that run hvrun on the demo guest: installs what is missing, builds a
# release hvrun, and sets $kernel and $initrd to the minimal kernel and its initramfs;
# defines on_kvm (below).
# Expects $repo.
"$repo/scripts/setup.sh" >&2
cargo build --release -p hvrun >&2
kernel=$("$repo/scripts/guest-kernel.sh")
initrd=$("$repo/scripts/build-initramfs.sh")

# on_kvm SECONDS CMD...: runs CMD where guests run at hardware speed: here when /dev/kvm
# is hardware-backed, else inside scripts/sandbox.sh with a timeout of SECONDS.
on_kvm() {
    local timeout_s=$1
    shift
    if [[ $("$repo/scripts/kvm-kind.sh") == hardware ]]; then
        "$@"
    else
        "$repo/scripts/sandbox.sh" --timeout "$timeout_s" -- "$@"
    fi
}
