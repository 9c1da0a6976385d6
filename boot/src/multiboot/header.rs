//! The multiboot header an OS image carries (Multiboot specification 0.6.96, 3.1): a
//! 32-bit aligned `magic`, `flags`, `checksum` triple in the image's first 8192 bytes,
//! with `magic + flags + checksum == 0` (mod 2^32). Flags 0-15 are requirements a loader
//! must refuse to boot without; 16-31 are optional (3.1.2).
use std::fmt;

/// `magic` (3.1.2).
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// The header must lie entirely within this many bytes of the start of the image (3.1.1).
pub const SEARCH_LIMIT: usize = 8192;
/// ... on a 32-bit boundary.
pub const HEADER_ALIGN: usize = 4;
/// `magic`, `flags` and `checksum`: the fields every header has.
pub const HEADER_LEN: usize = 12;

/// Bit 0: modules must be loaded on 4 KiB boundaries. hvrun always page-aligns them.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Bit 1: `mem_*` (and the memory map, if the loader has one) must be passed. hvrun
/// always passes both.
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Bit 2: video mode information must be passed. hvrun has no display.
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Bit 16: the header's address fields say where to load the image (the "a.out kludge")
/// instead of its ELF headers. hvrun loads ELF images only.
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0-15: requirements (3.1.2, "If the boot loader does not understand all the
/// requirement bits ... it must notify the user and fail to load the OS image").
pub const REQUIRED_MASK: u32 = 0xffff;
/// The requirements hvrun meets.
pub const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

/// A valid header whose requirements hvrun meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Where in the image it starts.
    pub offset: usize,
    pub flags: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The magic is there but `magic + flags + checksum` is not 0.
    BadChecksum { offset: usize },
    /// The magic is there but the rest of the header is not, within the file or within
    /// the first 8192 bytes.
    Truncated { offset: usize },
    VideoMode,
    AoutKludge,
    /// Requirement bits that mean nothing to this loader (the specification defines 0-2).
    UnknownRequirements(u32),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::BadChecksum { offset } => {
                write!(f, "bad multiboot header at offset {offset:#x}: magic + flags + checksum is not 0")
            }
            HeaderError::Truncated { offset } => write!(
                f,
                "truncated multiboot header at offset {offset:#x}: it must end within the file's first {SEARCH_LIMIT} bytes"
            ),
            HeaderError::VideoMode => {
                write!(f, "multiboot image requires a video mode (header flag 2): hvrun has no display")
            }
            HeaderError::AoutKludge => write!(
                f,
                "multiboot image uses header load addresses (flag 16, the a.out kludge): hvrun loads ELF images only"
            ),
            HeaderError::UnknownRequirements(bits) => {
                write!(f, "multiboot image requires features unknown to hvrun (header flags {bits:#x})")
            }
        }
    }
}

impl std::error::Error for HeaderError {}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Looks for the header in `head`, the first bytes of the image (up to [`SEARCH_LIMIT`]
/// of them). `Ok(None)`: no magic at all, this is not a multiboot image. A magic with a
/// bad checksum does not stop the search (the constant may occur in code or data); it
/// is reported only if no valid header follows.
pub fn find(head: &[u8]) -> Result<Option<Header>, HeaderError> {
    let head = &head[..head.len().min(SEARCH_LIMIT)];
    let mut bad = None;
    for offset in (0..head.len().saturating_sub(3)).step_by(HEADER_ALIGN) {
        if u32_at(head, offset) != HEADER_MAGIC {
            continue;
        }
        if offset + HEADER_LEN > head.len() {
            return Err(HeaderError::Truncated { offset });
        }
        let flags = u32_at(head, offset + 4);
        let checksum = u32_at(head, offset + 8);
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad.get_or_insert(HeaderError::BadChecksum { offset });
            continue;
        }
        let unknown = flags & REQUIRED_MASK & !(SUPPORTED_REQUIRED | FLAG_VIDEO_MODE);
        if unknown != 0 {
            return Err(HeaderError::UnknownRequirements(unknown));
        }
        if flags & FLAG_VIDEO_MODE != 0 {
            return Err(HeaderError::VideoMode);
        }
        if flags & FLAG_AOUT_KLUDGE != 0 {
            return Err(HeaderError::AoutKludge);
        }
        return Ok(Some(Header { offset, flags }));
    }
    bad.map_or(Ok(None), Err)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The 12 header bytes for `flags`, with the right checksum.
    pub(crate) fn header_bytes(flags: u32) -> Vec<u8> {
        let checksum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
        [HEADER_MAGIC, flags, checksum].iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn image_with(offset: usize, header: &[u8], len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len];
        img[offset..offset + header.len()].copy_from_slice(header);
        img
    }

    #[test]
    fn finds_the_header_kvm_unit_tests_use() {
        // cstart64.S: `.long mb_magic, mb_flags, 0 - (mb_magic + mb_flags)` with flags 0.
        assert_eq!(header_bytes(0), [0x02, 0xb0, 0xad, 0x1b, 0, 0, 0, 0, 0xfe, 0x4f, 0x52, 0xe4]);
        let img = image_with(0xb0, &header_bytes(0), 0x4000);
        assert_eq!(find(&img), Ok(Some(Header { offset: 0xb0, flags: 0 })));
        let img = image_with(0x1ff4, &header_bytes(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | 1 << 20), 0x2000);
        assert_eq!(find(&img), Ok(Some(Header { offset: 0x1ff4, flags: 0x10_0003 })));
    }

    #[test]
    fn no_magic_is_not_multiboot() {
        assert_eq!(find(b""), Ok(None));
        assert_eq!(find(&[0u8; 0x3000]), Ok(None));
        // Unaligned magic does not count; nor does one past the first 8 KiB.
        assert_eq!(find(&image_with(0x101, &header_bytes(0), 0x400)), Ok(None));
        assert_eq!(find(&image_with(0x2000, &header_bytes(0), 0x3000)), Ok(None));
    }

    #[test]
    fn bad_and_truncated_headers() {
        let mut bad = header_bytes(0);
        bad[8] ^= 1;
        assert_eq!(find(&image_with(0x40, &bad, 0x400)), Err(HeaderError::BadChecksum { offset: 0x40 }));
        // A bad one, then a good one: the good one wins.
        let mut img = image_with(0x40, &bad, 0x400);
        img[0x80..0x8c].copy_from_slice(&header_bytes(0));
        assert_eq!(find(&img), Ok(Some(Header { offset: 0x80, flags: 0 })));
        // The magic at the very end of the file, or straddling the 8 KiB limit.
        assert_eq!(find(&image_with(0x3fc, &header_bytes(0)[..4], 0x400)), Err(HeaderError::Truncated { offset: 0x3fc }));
        assert_eq!(find(&image_with(0x1ffc, &header_bytes(0), 0x3000)), Err(HeaderError::Truncated { offset: 0x1ffc }));
        assert_eq!(find(&image_with(0, &header_bytes(0)[..6], 6)), Err(HeaderError::Truncated { offset: 0 }));
    }

    #[test]
    fn requirements_hvrun_cannot_meet() {
        let f = |flags| find(&image_with(0, &header_bytes(flags), 64));
        assert_eq!(f(FLAG_VIDEO_MODE), Err(HeaderError::VideoMode));
        assert_eq!(f(FLAG_AOUT_KLUDGE), Err(HeaderError::AoutKludge));
        assert_eq!(f(1 << 3 | 1 << 15 | 1), Err(HeaderError::UnknownRequirements(0x8008)));
        assert_eq!(
            HeaderError::UnknownRequirements(0x8008).to_string(),
            "multiboot image requires features unknown to hvrun (header flags 0x8008)"
        );
    }
}
