//! Memory sizes as users write them: `512M`, `2G`, `1536MiB`, or plain bytes.
use std::fmt;

/// Binary units, largest first: (suffix, shift).
const UNITS: [(&str, u32); 4] = [("T", 40), ("G", 30), ("M", 20), ("K", 10)];

/// Why a text is not a size. The messages follow the text the user wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    NotASize,
    UnknownUnit,
    /// More bytes than 64 bits hold.
    TooLarge,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::NotASize => write!(f, "is not a size (try 512M or 2G)"),
            SizeError::UnknownUnit => write!(f, "has an unknown unit (use K, M, G or T)"),
            SizeError::TooLarge => write!(f, "is too large"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parses a size with an optional binary suffix (K, M, G, T, with or without "iB").
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let number: u64 = digits.parse().map_err(|_| SizeError::NotASize)?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(SizeError::UnknownUnit),
    };
    number.checked_mul(1 << shift).ok_or(SizeError::TooLarge)
}

/// A size the way users write it: the largest unit that divides it (`128M`, `256G`).
pub fn format_size(bytes: u64) -> String {
    for (suffix, shift) in UNITS {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1536MiB"), Ok(1536 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("lots"), Err(SizeError::NotASize));
        assert_eq!(parse_size(""), Err(SizeError::NotASize));
        assert_eq!(parse_size("2X"), Err(SizeError::UnknownUnit));
        assert_eq!(parse_size("99999999999T"), Err(SizeError::TooLarge));
    }

    #[test]
    fn formatted_sizes_parse_back() {
        assert_eq!(format_size(128 << 20), "128M");
        assert_eq!(format_size(256 << 30), "256G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1 << 40), "1T");
        assert_eq!(format_size(4097), "4097");
        assert_eq!(format_size(0), "0");
        for bytes in [128 << 20, 3 << 10, 4097, 5 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
