//! `hv_return_t`: mach error codes of the `err_local | err_sub(0xba5)` family.
use std::fmt;

/// A signed 32-bit mach error code, as every `hv_*` function returns.
pub type hv_return_t = i32;

macro_rules! return_codes {
    ($($name:ident = $value:expr, $what:expr;)*) => {
        $(#[doc = $what] pub const $name: hv_return_t = $value as u32 as i32;)*

        /// The name of a return code (`HV_BAD_ARGUMENT`), or `None` for an unknown value.
        pub fn hv_return_name(code: hv_return_t) -> Option<&'static str> {
            match code { $($name => Some(stringify!($name)),)* _ => None }
        }

        fn hv_return_description(code: hv_return_t) -> &'static str {
            match code { $($name => $what,)* _ => "unknown Hypervisor.framework error" }
        }
    };
}

return_codes! {
    HV_SUCCESS = 0, "success";
    HV_ERROR = 0xfae9_4001u32, "error";
    HV_BUSY = 0xfae9_4002u32, "busy (one VM per process; vCPU in use)";
    HV_BAD_ARGUMENT = 0xfae9_4003u32, "bad argument";
    HV_NO_RESOURCES = 0xfae9_4005u32, "no resources";
    HV_NO_DEVICE = 0xfae9_4006u32, "no device (no hardware virtualization)";
    HV_DENIED = 0xfae9_4007u32, "denied (missing com.apple.security.hypervisor entitlement?)";
    HV_UNSUPPORTED = 0xfae9_400fu32, "unsupported";
}

/// A failed `hv_*` call: the code, named when printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HvError(pub hv_return_t);

impl HvError {
    /// `Ok(())` for `HV_SUCCESS`, the error otherwise.
    pub fn check(code: hv_return_t) -> Result<(), HvError> {
        if code == HV_SUCCESS {
            Ok(())
        } else {
            Err(HvError(code))
        }
    }
}

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match hv_return_name(self.0) {
            Some(name) => write!(f, "{name} ({})", hv_return_description(self.0)),
            None => write!(f, "unknown hv_return_t {:#010x}", self.0 as u32),
        }
    }
}

impl fmt::Debug for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for HvError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_their_names() {
        assert_eq!(HvError(HV_BAD_ARGUMENT).to_string(), "HV_BAD_ARGUMENT (bad argument)");
        assert_eq!(HV_BAD_ARGUMENT, -85377021);
        assert_eq!(HvError(-1).to_string(), "unknown hv_return_t 0xffffffff");
        assert_eq!(HvError::check(HV_SUCCESS), Ok(()));
        assert_eq!(HvError::check(HV_DENIED), Err(HvError(HV_DENIED)));
    }
}
