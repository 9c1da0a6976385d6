# Sourced by scripts that run hvrun on the demo guest: installs what is missing, builds a
# release hvrun, and sets $kernel and $initrd to the minimal kernel and its initramfs.
# Expects $repo.
"$repo/scripts/setup.sh" >&2
cargo build --release -p hvrun >&2
kernel=$("$repo/scripts/guest-kernel.sh")
initrd=$("$repo/scripts/build-initramfs.sh")
