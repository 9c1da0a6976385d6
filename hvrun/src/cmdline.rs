//! The command line a guest gets, from `--cmdline`, `--root` and `--append`, by kind of
//! kernel:
//! - Linux: `--cmdline` (default "console=ttyS0"), then "root=/dev/vda" for `--root`,
//!   then the `--append` words;
//! - a multiboot image: the image's path as given, then `--cmdline` (no default) and the
//!   `--append` words. GRUB and QEMU pass the image's name first, and kvm-unit-tests
//!   takes the command line's words as argv, argv[0] being that name.
use std::path::Path;

/// The Linux command line unless --cmdline replaces it: the console on COM1.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct CmdlineArgs {
    pub cmdline: Option<String>,
    pub root: bool,
    pub append: Option<String>,
}

impl CmdlineArgs {
    pub fn linux(&self) -> String {
        let mut words = vec![self.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_string())];
        if self.root {
            words.push("root=/dev/vda".into());
        }
        words.extend(self.append.clone());
        words.join(" ")
    }

    pub fn multiboot(&self, image: &Path) -> String {
        let mut words = vec![image.display().to_string()];
        words.extend(self.cmdline.clone().filter(|c| !c.is_empty()));
        words.extend(self.append.clone());
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_command_lines() {
        assert_eq!(CmdlineArgs::default().linux(), "console=ttyS0");
        let all = CmdlineArgs { cmdline: Some("quiet".into()), root: true, append: Some("a=1 b".into()) };
        assert_eq!(all.linux(), "quiet root=/dev/vda a=1 b");
    }

    #[test]
    fn multiboot_command_lines_start_with_the_image() {
        let image = Path::new("x86/vmexit.flat");
        assert_eq!(CmdlineArgs::default().multiboot(image), "x86/vmexit.flat");
        let args = CmdlineArgs { append: Some("cpuid vmcall".into()), ..Default::default() };
        assert_eq!(args.multiboot(image), "x86/vmexit.flat cpuid vmcall");
        let both = CmdlineArgs { cmdline: Some("-x".into()), root: true, append: Some("y".into()) };
        assert_eq!(both.multiboot(image), "x86/vmexit.flat -x y", "root= means nothing to a multiboot image");
    }
}
