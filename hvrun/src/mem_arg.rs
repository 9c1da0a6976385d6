//! The `--mem SIZE` argument: guest memory, checked against what hvrun boots, with
//! errors that repeat what the user typed.
use crate::size::{format_size, parse_size, SizeError};
use boot::layout::{MAX_MEM_SIZE, MIN_MEM_SIZE, PAGE_SIZE};
use std::fmt;

/// A `--mem` value hvrun cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemError {
    /// The value as given.
    text: String,
    reason: MemReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemReason {
    Syntax(SizeError),
    OutOfRange,
    NotPages,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = &self.text;
        match self.reason {
            MemReason::Syntax(e) => write!(f, "--mem {text} {e}"),
            MemReason::OutOfRange => write!(
                f,
                "--mem {text} is out of range ({} to {}) for the guest's memory",
                format_size(MIN_MEM_SIZE),
                format_size(MAX_MEM_SIZE)
            ),
            MemReason::NotPages => write!(f, "--mem {text} is not a whole number of {} pages", format_size(PAGE_SIZE)),
        }
    }
}

impl std::error::Error for MemError {}

/// The guest memory size `text` asks for, if hvrun can boot with it.
pub fn parse_mem(text: &str) -> Result<u64, MemError> {
    let fail = |reason| MemError { text: text.to_string(), reason };
    let bytes = match parse_size(text) {
        Ok(bytes) => bytes,
        // Beyond 64 bits is beyond the range too: say it the same way.
        Err(SizeError::TooLarge) => return Err(fail(MemReason::OutOfRange)),
        Err(e) => return Err(fail(MemReason::Syntax(e))),
    };
    if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&bytes) {
        return Err(fail(MemReason::OutOfRange));
    }
    if bytes % PAGE_SIZE != 0 {
        return Err(fail(MemReason::NotPages));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        parse_mem(text).unwrap_err().to_string()
    }

    #[test]
    fn sizes_in_range() {
        assert_eq!(parse_mem("512M"), Ok(512 << 20));
        assert_eq!(parse_mem("128M"), Ok(MIN_MEM_SIZE));
        assert_eq!(parse_mem("256G"), Ok(MAX_MEM_SIZE));
        assert_eq!(parse_mem("1536MiB"), Ok(1536 << 20));
        assert_eq!(parse_mem("131072K"), Ok(128 << 20));
    }

    #[test]
    fn errors_echo_the_argument() {
        assert_eq!(message("99999G"), "--mem 99999G is out of range (128M to 256G) for the guest's memory");
        assert_eq!(message("100000G"), "--mem 100000G is out of range (128M to 256G) for the guest's memory");
        assert_eq!(message("64M"), "--mem 64M is out of range (128M to 256G) for the guest's memory");
        assert_eq!(message("257G"), "--mem 257G is out of range (128M to 256G) for the guest's memory");
        assert_eq!(message("99999999999T"), "--mem 99999999999T is out of range (128M to 256G) for the guest's memory");
        assert_eq!(message("134217729"), "--mem 134217729 is not a whole number of 4K pages");
        assert_eq!(message("lots"), "--mem lots is not a size (try 512M or 2G)");
        assert_eq!(message("2X"), "--mem 2X has an unknown unit (use K, M, G or T)");
    }

    #[test]
    fn the_range_is_the_one_boot_checks() {
        // The range printed is the range boot checks: each end boots, one page past does not.
        for bytes in [MIN_MEM_SIZE, MAX_MEM_SIZE] {
            assert!(boot::check_mem_size(bytes).is_ok());
        }
        assert!(boot::check_mem_size(MIN_MEM_SIZE - PAGE_SIZE).is_err());
        assert!(boot::check_mem_size(MAX_MEM_SIZE + PAGE_SIZE).is_err());
    }
}
