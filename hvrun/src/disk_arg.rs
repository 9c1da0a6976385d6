//! The `--disk PATH[,ro][,serial=ID]` argument.
use std::path::PathBuf;

/// GET_ID answers with at most 20 bytes (virtio 1.2, 5.2.6).
const MAX_SERIAL_LEN: usize = devices::virtio::block::request::ID_BYTES;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (/sys/block/vdX/serial).
    pub serial: String,
}

/// Parses `PATH[,ro][,serial=ID]` (clap's value parser for --disk).
pub fn parse_disk(arg: &str) -> Result<DiskSpec, String> {
    let mut parts = arg.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err("expected PATH[,ro][,serial=ID]".into());
    }
    let mut spec = DiskSpec { path: PathBuf::from(path), read_only: false, serial: String::new() };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => spec.read_only = true,
            Some(("serial", id)) => {
                if id.is_empty() || id.len() > MAX_SERIAL_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!("serial '{id}' must be 1 to {MAX_SERIAL_LEN} printable ASCII characters"));
                }
                spec.serial = id.to_string();
            }
            _ => return Err(format!("unknown disk option '{option}' (have: ro, serial=ID)")),
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let d = parse_disk("a.img").unwrap();
        assert_eq!((d.path, d.read_only, d.serial), (PathBuf::from("a.img"), false, String::new()));
        let d = parse_disk("/x/b.img,ro,serial=DISK-1").unwrap();
        assert_eq!((d.path, d.read_only, d.serial), (PathBuf::from("/x/b.img"), true, "DISK-1".to_string()));
        assert!(parse_disk("").is_err());
        assert!(parse_disk(",ro").is_err());
        assert!(parse_disk("a.img,rw").unwrap_err().contains("unknown disk option 'rw'"));
        assert!(parse_disk("a.img,serial=").is_err());
        assert!(parse_disk("a.img,serial=has space").is_err());
        assert!(parse_disk("a.img,serial=123456789012345678901").is_err());
        assert!(parse_disk("a.img,serial=12345678901234567890").is_ok());
    }
}
