//! Turning Linux errors (errno values from KVM ioctls) into `hv_return_t` codes.
//!
//! Every failure of the layer is reported as one of Hypervisor.framework's codes, with a
//! log line naming the ioctl, so that the VMM's error handling is the same on both hosts.
use crate::error::*;

/// The `hv_return_t` closest in meaning to an errno value.
pub fn errno_to_hv(errno: i32) -> hv_return_t {
    match errno {
        libc::EBUSY | libc::EEXIST => HV_BUSY,
        libc::ENOMEM | libc::ENOSPC | libc::EMFILE | libc::ENFILE => HV_NO_RESOURCES,
        libc::ENODEV | libc::ENOENT | libc::ENXIO => HV_NO_DEVICE,
        libc::EACCES | libc::EPERM => HV_DENIED,
        libc::EINVAL | libc::EFAULT | libc::E2BIG => HV_BAD_ARGUMENT,
        _ => HV_ERROR,
    }
}

/// Logs a failed ioctl (`what`: which one and on what) and maps its errno.
pub fn ioctl_failed(what: &str, err: &kvm_ioctls::Error) -> hv_return_t {
    let code = errno_to_hv(err.errno());
    log::error!("hvf-sys/linux: {what} failed: {err} (errno {}) -> {}", err.errno(),
        hv_return_name(code).unwrap_or("?"));
    code
}

/// The calling thread's errno, after a raw `libc::ioctl` returned -1.
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Logs a failed raw ioctl by errno and maps it.
pub fn raw_ioctl_failed(what: &str, errno: i32) -> hv_return_t {
    let code = errno_to_hv(errno);
    log::error!("hvf-sys/linux: {what} failed: {} (errno {errno}) -> {}",
        std::io::Error::from_raw_os_error(errno), hv_return_name(code).unwrap_or("?"));
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_map_to_framework_codes() {
        assert_eq!(errno_to_hv(libc::EBUSY), HV_BUSY);
        assert_eq!(errno_to_hv(libc::ENOMEM), HV_NO_RESOURCES);
        assert_eq!(errno_to_hv(libc::ENOENT), HV_NO_DEVICE);
        assert_eq!(errno_to_hv(libc::EACCES), HV_DENIED);
        assert_eq!(errno_to_hv(libc::EINVAL), HV_BAD_ARGUMENT);
        assert_eq!(errno_to_hv(libc::EIO), HV_ERROR);
    }
}
