//! A raw disk image: a host file (or block device) the guest sees as a disk, locked
//! against a second user, read and written at byte offsets.
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Virtio block sectors are always 512 bytes (virtio 1.2, 5.2.6), whatever `blk_size`.
pub const SECTOR_SIZE: u64 = 512;

/// Why a disk image cannot be used. Each names the image, for a one-line message.
#[derive(Debug)]
pub enum DiskError {
    Open { path: PathBuf, error: io::Error },
    /// Another process (another hvrun) holds the image's lock.
    InUse { path: PathBuf },
    Lock { path: PathBuf, error: io::Error },
    Size { path: PathBuf, error: io::Error },
    NotAFileOrDevice { path: PathBuf },
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Open { path, error } => write!(f, "cannot open disk image {}: {error}", path.display()),
            DiskError::InUse { path } => {
                write!(f, "disk image {} is in use: another process (or another --disk) holds its lock", path.display())
            }
            DiskError::Lock { path, error } => write!(f, "cannot lock disk image {}: {error}", path.display()),
            DiskError::Size { path, error } => write!(f, "cannot find the size of disk image {}: {error}", path.display()),
            DiskError::NotAFileOrDevice { path } => {
                write!(f, "disk image {} is not a regular file or block device", path.display())
            }
        }
    }
}

impl std::error::Error for DiskError {}

/// An open, locked disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    size: u64,
    read_only: bool,
}

impl Disk {
    /// Opens `path`, read-only if `read_only`, and locks it: exclusively for writing, shared
    /// for reading, so a second hvrun cannot write under a running guest's file system.
    pub fn open(path: &Path, read_only: bool) -> Result<Disk, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|error| DiskError::Open { path: path.to_owned(), error })?;
        let kind = file.metadata().map_err(|error| DiskError::Size { path: path.to_owned(), error })?.file_type();
        if !kind.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&kind) {
            return Err(DiskError::NotAFileOrDevice { path: path.to_owned() });
        }
        let mode = if read_only { libc::LOCK_SH } else { libc::LOCK_EX };
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DiskError::InUse { path: path.to_owned() }
            } else {
                DiskError::Lock { path: path.to_owned(), error }
            });
        }
        // The end, not the metadata length: a block device's metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(|error| DiskError::Size { path: path.to_owned(), error })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "disk image {}: size {size} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not used",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(Disk { file, size, read_only })
    }

    /// Whole sectors in the image: the disk's capacity.
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads `len` bytes at `offset` into `buf`.
    ///
    /// # Safety
    /// `buf..buf + len` must be valid for writes.
    pub unsafe fn read_at(&self, offset: u64, buf: *mut u8, len: usize) -> io::Result<()> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.read_vectored_at(offset, &[(buf, len)]) }
    }

    /// Writes `len` bytes from `buf` at `offset`.
    ///
    /// # Safety
    /// `buf..buf + len` must be valid for reads.
    pub unsafe fn write_at(&self, offset: u64, buf: *const u8, len: usize) -> io::Result<()> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.write_vectored_at(offset, &[(buf.cast_mut(), len)]) }
    }

    /// Reads the image from `offset` into `bufs` in order, one `preadv` for a whole
    /// request's scattered guest pages rather than one `pread` each.
    ///
    /// # Safety
    /// Each `(ptr, len)` must be valid for writes (guest RAM that stays mapped).
    pub unsafe fn read_vectored_at(&self, offset: u64, bufs: &[(*mut u8, usize)]) -> io::Result<()> {
        // SAFETY: the caller's promise; preadv writes only into the buffers.
        unsafe { self.transfer(offset, bufs, |fd, iov, n, at| libc::preadv(fd, iov, n, at)) }
    }

    /// Writes `bufs` in order to the image from `offset`, with `pwritev`.
    ///
    /// # Safety
    /// Each `(ptr, len)` must be valid for reads.
    pub unsafe fn write_vectored_at(&self, offset: u64, bufs: &[(*mut u8, usize)]) -> io::Result<()> {
        // SAFETY: the caller's promise; pwritev only reads the buffers.
        unsafe { self.transfer(offset, bufs, |fd, iov, n, at| libc::pwritev(fd, iov, n, at)) }
    }

    /// Runs `op` (preadv or pwritev) until every byte of `bufs` is transferred, picking
    /// up after short transfers and EINTR.
    unsafe fn transfer(
        &self,
        offset: u64,
        bufs: &[(*mut u8, usize)],
        op: impl Fn(libc::c_int, *const libc::iovec, libc::c_int, libc::off_t) -> libc::ssize_t,
    ) -> io::Result<()> {
        /// The POSIX minimum of IOV_MAX: a longer list goes in several calls.
        const IOV_MAX: usize = 1024;
        let mut iov: Vec<libc::iovec> =
            bufs.iter().filter(|b| b.1 > 0).map(|&(base, len)| libc::iovec { iov_base: base.cast(), iov_len: len }).collect();
        let mut first = 0;
        let mut at = offset;
        while first < iov.len() {
            let count = (iov.len() - first).min(IOV_MAX);
            let n = op(self.file.as_raw_fd(), iov[first..].as_ptr(), count as libc::c_int, at as libc::off_t);
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "disk image shrank under the guest"));
            }
            // Skip what was transferred: whole buffers, then part of the next.
            let mut n = n as usize;
            at += n as u64;
            while n > 0 && n >= iov[first].iov_len {
                n -= iov[first].iov_len;
                first += 1;
            }
            if n > 0 {
                // SAFETY: n < iov_len, so the advanced pointer stays inside the buffer.
                iov[first].iov_base = unsafe { iov[first].iov_base.cast::<u8>().add(n) }.cast();
                iov[first].iov_len -= n;
            }
        }
        Ok(())
    }

    /// Makes every completed write durable: what a FLUSH request promises the guest.
    pub fn flush(&self) -> io::Result<()> {
        // fsync on macOS only reaches the drive's cache; F_FULLFSYNC asks the drive to
        // write it out (fsync(2) on macOS).
        #[cfg(target_os = "macos")]
        {
            // SAFETY: fcntl on our own descriptor.
            if unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_FULLFSYNC) } == 0 {
                return Ok(());
            }
            // Some file systems (network, FUSE) refuse F_FULLFSYNC: fall back to fsync.
        }
        self.file.sync_all()
    }

    /// Frees `len` bytes at `offset` in the image: they read back as zeroes and no longer
    /// take space on the host. Errors with `Unsupported` if the host cannot punch holes.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on our own descriptor.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EOPNOTSUPP) { io::ErrorKind::Unsupported.into() } else { e });
        }
        #[cfg(target_os = "macos")]
        {
            let mut args =
                libc::fpunchhole_t { fp_flags: 0, reserved: 0, fp_offset: offset as libc::off_t, fp_length: len as libc::off_t };
            // SAFETY: fcntl on our own descriptor with a valid fpunchhole_t.
            let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_PUNCHHOLE, &mut args) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENOTSUP) { io::ErrorKind::Unsupported.into() } else { e });
        }
        #[allow(unreachable_code)]
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Writes zeroes over `len` bytes at `offset`: a hole where the host can punch one,
    /// else zero-filled writes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.punch_hole(offset, len) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
            other => return other,
        }
        const CHUNK: usize = 1 << 16;
        let zeroes = vec![0u8; CHUNK];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            // SAFETY: `zeroes` holds at least `n` bytes.
            unsafe { self.write_at(offset + done, zeroes.as_ptr(), n)? };
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(bytes: &[u8]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("disk.img");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, path)
    }

    /// A directory under the target's tmp, removed on drop (no extra crate for this).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let p = std::env::temp_dir().join(format!("hvrun-disk-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn capacity_is_whole_sectors_and_io_round_trips() {
        let (_dir, path) = image(&[7u8; 1300]);
        let disk = Disk::open(&path, false).unwrap();
        assert_eq!(disk.sectors(), 2);
        let data = [1u8, 2, 3, 4];
        unsafe { disk.write_at(510, data.as_ptr(), 4).unwrap() };
        let mut back = [0u8; 6];
        unsafe { disk.read_at(509, back.as_mut_ptr(), 6).unwrap() };
        assert_eq!(back, [7, 1, 2, 3, 4, 7]);
        disk.flush().unwrap();
        // Past the end of the file: an error, not a short read into guest memory.
        let mut far = [0u8; 8];
        assert!(unsafe { disk.read_at(1296, far.as_mut_ptr(), 8) }.is_err());
    }

    #[test]
    fn vectored_io_keeps_buffer_order() {
        let (_dir, path) = image(&[0u8; 4096]);
        let disk = Disk::open(&path, false).unwrap();
        let (mut a, mut b, mut c) = ([1u8; 3], [0u8; 0], [2u8; 5]);
        let bufs = [(a.as_mut_ptr(), 3), (b.as_mut_ptr(), 0), (c.as_mut_ptr(), 5)];
        unsafe { disk.write_vectored_at(100, &bufs).unwrap() };
        let (mut x, mut y) = ([0u8; 4], [0u8; 6]);
        unsafe { disk.read_vectored_at(99, &[(x.as_mut_ptr(), 4), (y.as_mut_ptr(), 6)]).unwrap() };
        assert_eq!((x, y), ([0, 1, 1, 1], [2, 2, 2, 2, 2, 0]));
    }

    #[test]
    fn a_second_writer_or_reader_is_refused_while_locked() {
        let (_dir, path) = image(&[0u8; 4096]);
        let first = Disk::open(&path, false).unwrap();
        let e = Disk::open(&path, false).unwrap_err();
        assert!(matches!(e, DiskError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(matches!(Disk::open(&path, true), Err(DiskError::InUse { .. })));
        drop(first);
        // Readers share.
        let a = Disk::open(&path, true).unwrap();
        let b = Disk::open(&path, true).unwrap();
        assert!(a.read_only() && b.read_only());
        assert!(matches!(Disk::open(&path, false), Err(DiskError::InUse { .. })));
    }

    #[test]
    fn bad_paths_are_named() {
        let e = Disk::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
        let dir = tempdir::Dir::new();
        let e = Disk::open(&dir.0, true).unwrap_err();
        assert!(matches!(e, DiskError::NotAFileOrDevice { .. } | DiskError::Open { .. }), "{e}");
    }

    #[test]
    fn punched_and_zeroed_ranges_read_back_as_zeroes() {
        let (_dir, path) = image(&[0xaau8; 1 << 20]);
        let disk = Disk::open(&path, false).unwrap();
        disk.write_zeroes(4096, 8192).unwrap();
        let mut back = vec![0u8; 3 * 4096];
        unsafe { disk.read_at(0, back.as_mut_ptr(), back.len()).unwrap() };
        assert!(back[..4096].iter().all(|&b| b == 0xaa));
        assert!(back[4096..].iter().all(|&b| b == 0));
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(&path).unwrap().blocks();
        match disk.punch_hole(1 << 19, 1 << 19) {
            Ok(()) => assert!(std::fs::metadata(&path).unwrap().blocks() < before),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::Unsupported),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20, "size kept");
    }
}
