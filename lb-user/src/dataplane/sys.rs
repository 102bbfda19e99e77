//! The few `bpf(2)` commands aya 0.14 does not expose the way pinning needs
//! them: open and pin objects, read map and link info, walk and copy raw map
//! entries, create a plain array map, and create, update and detach XDP links.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `attach_type` of an XDP link.
const BPF_XDP: u32 = 37;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;

/// Magic number of a BPF filesystem (`statfs`).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// `union bpf_attr`, large enough for every command used here (the kernel
/// accepts a shorter `size` than its own and zero-fills the rest).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }
    fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as u32) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: these commands return a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Whether `path` lies on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = cpath(path)?;
    // SAFETY: plain syscall with a valid path and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    bpf_fd(BPF_OBJ_GET, Attr::new().u64_at(0, c.as_ptr() as u64))
}

/// Pins `fd` at `path` (which must not exist).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    bpf(BPF_OBJ_PIN, Attr::new().u64_at(0, c.as_ptr() as u64).u32_at(8, fd.as_raw_fd() as u32)).map(|_| ())
}

fn info(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, fd.as_raw_fd() as u32).u32_at(4, buf.len() as u32).u64_at(8, buf.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

fn word(buf: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

/// What defines a map's layout: two maps with equal definitions are interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapDef {
    /// Why `self` (the pinned map) cannot serve as `want`; `None` when it can.
    pub fn mismatch(&self, want: &MapDef) -> Option<String> {
        let mut why = Vec::new();
        let mut diff = |what: &str, had: u32, want: u32| {
            if had != want {
                why.push(format!("{what} {had} -> {want}"));
            }
        };
        diff("type", self.map_type, want.map_type);
        diff("key size", self.key_size, want.key_size);
        diff("value size", self.value_size, want.value_size);
        diff("max_entries", self.max_entries, want.max_entries);
        diff("flags", self.flags, want.flags);
        (!why.is_empty()).then(|| why.join(", "))
    }

    /// Entries of `self` can be copied one by one into a map of `to`: both
    /// hash maps (plain or LRU) with the same key and value sizes.
    pub fn copyable_into(&self, to: &MapDef) -> bool {
        let hash = |t| t == BPF_MAP_TYPE_HASH || t == BPF_MAP_TYPE_LRU_HASH;
        hash(self.map_type) && hash(to.map_type) && self.key_size == to.key_size && self.value_size == to.value_size
    }
}

/// `struct bpf_map_info`'s layout fields.
pub fn map_def(fd: BorrowedFd<'_>) -> io::Result<MapDef> {
    let mut buf = [0u8; 88];
    info(fd, &mut buf)?;
    Ok(MapDef {
        map_type: word(&buf, 0),
        key_size: word(&buf, 8),
        value_size: word(&buf, 12),
        max_entries: word(&buf, 16),
        flags: word(&buf, 20),
    })
}

/// A program's id and tag (`struct bpf_prog_info`).
pub fn prog_id_tag(fd: BorrowedFd<'_>) -> io::Result<(u32, [u8; 8])> {
    let mut buf = [0u8; 32];
    info(fd, &mut buf)?;
    Ok((word(&buf, 4), buf[8..16].try_into().expect("8 bytes")))
}

/// A link's program id and, for an XDP link, its interface index (`struct bpf_link_info`).
pub fn link_prog_ifindex(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut buf = [0u8; 32];
    info(fd, &mut buf)?;
    Ok((word(&buf, 8), word(&buf, 16)))
}

/// The program with id `id`'s tag (for logs), from a link's program id.
pub fn prog_tag_by_id(id: u32) -> io::Result<[u8; 8]> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let fd = bpf_fd(BPF_PROG_GET_FD_BY_ID, Attr::new().u32_at(0, id))?;
    use std::os::fd::AsFd;
    Ok(prog_id_tag(fd.as_fd())?.1)
}

/// Creates a plain array map (for the daemon's own state).
pub fn array_create(name: &str, value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32_at(0, BPF_MAP_TYPE_ARRAY).u32_at(4, 4).u32_at(8, value_size).u32_at(12, max_entries);
    let n = name.len().min(15);
    attr.0[28..28 + n].copy_from_slice(&name.as_bytes()[..n]);
    bpf_fd(BPF_MAP_CREATE, &mut attr)
}

/// Looks `key` up; `Ok(false)` when it is absent.
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.u32_at(0, fd.as_raw_fd() as u32).u64_at(8, key.as_ptr() as u64).u64_at(16, value.as_mut_ptr() as u64);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `key`; `Ok(false)` when it was absent.
pub fn delete(fd: BorrowedFd<'_>, key: &[u8]) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.u32_at(0, fd.as_raw_fd() as u32).u64_at(8, key.as_ptr() as u64);
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, fd.as_raw_fd() as u32)
        .u64_at(8, key.as_ptr() as u64)
        .u64_at(16, value.as_ptr() as u64)
        .u64_at(24, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// The key after `key` (the first with `None`); `Ok(false)` at the end.
fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let mut attr = Attr::new();
    attr.u32_at(0, fd.as_raw_fd() as u32)
        .u64_at(8, key.map_or(0, |k| k.as_ptr() as u64))
        .u64_at(16, next.as_mut_ptr() as u64);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Copies every entry of hash map `from` into `to` (same key and value
/// sizes) with `flags` (`BPF_ANY`, or `BPF_NOEXIST` to keep what `to`
/// holds). Returns (entries seen, entries written). An entry that vanishes
/// while the walk runs (LRU eviction, expiry) is skipped.
pub fn copy_entries(from: BorrowedFd<'_>, to: BorrowedFd<'_>, def: &MapDef, flags: u64) -> io::Result<(u64, u64)> {
    let mut key = vec![0u8; def.key_size as usize];
    let mut next = vec![0u8; def.key_size as usize];
    let mut value = vec![0u8; def.value_size as usize];
    let (mut seen, mut written) = (0u64, 0u64);
    let mut first = true;
    // Bounded: a hash map walk ends, but entries inserted meanwhile could extend it.
    let limit = u64::from(def.max_entries) * 2 + 16;
    while seen < limit && next_key(from, (!first).then_some(key.as_slice()), &mut next)? {
        first = false;
        std::mem::swap(&mut key, &mut next);
        if !lookup(from, &key, &mut value)? {
            continue;
        }
        seen += 1;
        match update(to, &key, &value, flags) {
            Ok(()) => written += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((seen, written))
}

/// Attaches `prog` to `ifindex` through a new XDP link.
pub fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new();
    attr.u32_at(0, prog.as_raw_fd() as u32).u32_at(4, ifindex).u32_at(8, BPF_XDP).u32_at(12, flags);
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Replaces the program of `link` by `prog`, atomically: each packet runs
/// either the old program or the new one.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.u32_at(0, link.as_raw_fd() as u32).u32_at(4, prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Detaches `link` from its interface now, whoever else holds it.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    bpf(BPF_LINK_DETACH, Attr::new().u32_at(0, link.as_raw_fd() as u32)).map(|_| ())
}

pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_names_every_difference() {
        let a = MapDef { map_type: 9, key_size: 40, value_size: 24, max_entries: 4096, flags: 0 };
        assert_eq!(a.mismatch(&a), None);
        let b = MapDef { max_entries: 8192, ..a };
        assert_eq!(a.mismatch(&b).as_deref(), Some("max_entries 4096 -> 8192"));
        let c = MapDef { value_size: 28, flags: 1024, ..a };
        assert_eq!(a.mismatch(&c).as_deref(), Some("value size 24 -> 28, flags 0 -> 1024"));
        assert!(a.copyable_into(&b));
        assert!(!a.copyable_into(&c));
        let arr = MapDef { map_type: BPF_MAP_TYPE_ARRAY, ..a };
        assert!(!arr.copyable_into(&arr));
    }
}
