//! The pin directory (`[daemon] pin_path`): the maps, one XDP link per
//! interface and the daemon's own state, pinned in a BPF filesystem so that
//! the data path keeps running while no daemon does, and the next daemon
//! takes it over.
//!
//! ```text
//! /sys/fs/bpf/xlb/
//!   state            array map: who owns the pins (interfaces, config), XDP modes, drains
//!   link_eth0        the XDP link of each interface
//!   CONNTRACK, ...   every map of the object
//! ```
//!
//! A new daemon ([`prepare`]) checks each pinned map against the map the
//! object it loads declares (type, key size, value size, max_entries,
//! flags): a match is reused as is, a mismatch is loaded fresh next to it
//! (`NAME__new`; bpffs refuses dots in names), filled (hash maps: entries copied), and takes the old pin's
//! place once the new program runs ([`PinPlan::commit`]).

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::sys::{self, MapDef};

/// The daemon's state map's pin name.
pub const STATE_PIN: &str = "state";
/// Bytes of the state map's one value: a little-endian u32 length, then JSON.
const STATE_BYTES: u32 = 16384;
/// Suffix of a map loaded fresh, pinned next to the one it replaces until the new program runs.
const NEW_SUFFIX: &str = "__new";

/// The pin of the XDP link on `iface`.
pub fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// What the daemon keeps next to the pins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The config file of the daemon that made the pins.
    pub config: String,
    /// Its `[daemon] interfaces`: pins of other interfaces belong to another xlb.
    pub interfaces: Vec<String>,
    /// The XDP mode each link was attached in.
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    /// The daemon running on these pins; 0 while none does.
    #[serde(default)]
    pub pid: u32,
    /// Drained backends: (service name, backend address:port).
    #[serde(default)]
    pub drains: Vec<(String, String)>,
}

/// The pinned state map.
pub struct StateMap {
    fd: OwnedFd,
}

impl StateMap {
    /// Opens the pinned one, if any.
    fn open(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(STATE_PIN);
        if !path.exists() {
            return Ok(None);
        }
        let fd = sys::obj_get(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Some(Self { fd }))
    }

    fn create(dir: &Path) -> anyhow::Result<Self> {
        let fd = sys::array_create("xlb_state", STATE_BYTES, 1).context("creating the state map")?;
        let path = dir.join(STATE_PIN);
        sys::obj_pin(fd.as_fd(), &path).with_context(|| format!("pinning {}", path.display()))?;
        Ok(Self { fd })
    }

    /// The state; `None` when the map holds none (or not ours).
    pub fn read(&self) -> anyhow::Result<Option<State>> {
        let mut buf = vec![0u8; STATE_BYTES as usize];
        if !sys::lookup(self.fd.as_fd(), &0u32.to_ne_bytes(), &mut buf)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 || len > buf.len() - 4 {
            return Ok(None);
        }
        Ok(serde_json::from_slice(&buf[4..4 + len]).ok())
    }

    pub fn write(&self, state: &State) -> anyhow::Result<()> {
        let json = serde_json::to_vec(state)?;
        if json.len() > STATE_BYTES as usize - 4 {
            bail!("the daemon state ({} bytes) does not fit the state map ({STATE_BYTES} bytes)", json.len());
        }
        let mut buf = vec![0u8; STATE_BYTES as usize];
        buf[..4].copy_from_slice(&(json.len() as u32).to_le_bytes());
        buf[4..4 + json.len()].copy_from_slice(&json);
        sys::update(self.fd.as_fd(), &0u32.to_ne_bytes(), &buf, sys::BPF_ANY).context("writing the state map")
    }
}

/// What became of one map of the object.
pub enum Fate {
    /// The pinned map matched: the new program uses it, entries and all.
    Reused,
    /// No pin of that name: created and pinned.
    New,
    /// The pinned map did not match (`why`): a fresh one is loaded and
    /// pinned as `NAME__new` until [`PinPlan::commit`].
    Replaced { why: String, old: OwnedFd, old_def: MapDef },
}

pub struct PinnedMap {
    pub name: String,
    pub want: MapDef,
    pub fate: Fate,
}

impl PinnedMap {
    /// Where the loader finds (reused) or pins (new) this map.
    pub fn load_path(&self, dir: &Path) -> PathBuf {
        match self.fate {
            Fate::Replaced { .. } => dir.join(format!("{}{NEW_SUFFIX}", self.name)),
            _ => dir.join(&self.name),
        }
    }
}

/// Who is asking for the pins.
#[derive(Clone, Debug)]
pub struct Identity {
    pub config: PathBuf,
    pub interfaces: Vec<String>,
}

/// The pin directory as a starting daemon found it, and what it does with each map.
pub struct PinPlan {
    pub dir: PathBuf,
    pub state: StateMap,
    /// What the previous daemon left (`None`: fresh pins).
    pub previous: Option<State>,
    pub maps: Vec<PinnedMap>,
    /// The pinned XDP links, by interface.
    pub links: BTreeMap<String, OwnedFd>,
    /// The daemon that owns the pins now.
    pub who: Identity,
}

/// The maps of `object` to pin (not its `.rodata`/`.bss`/`.data`), with the
/// definition the loader will create them with: `max_entries` overridden by
/// `sizes`, ring buffers rounded as aya rounds them.
pub fn object_maps(object: &[u8], sizes: &[(&str, u32)]) -> anyhow::Result<Vec<(String, MapDef)>> {
    use aya_obj::EbpfSectionKind;
    let obj = aya_obj::Object::parse(object).context("parsing the XDP object")?;
    let page = page_size();
    let mut out = Vec::new();
    for (name, m) in &obj.maps {
        if !matches!(m.section_kind(), EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps) || name.contains('.') {
            continue;
        }
        let mut def = MapDef {
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: sizes.iter().find(|(n, _)| n == name).map_or(m.max_entries(), |&(_, v)| v),
            flags: m.map_flags(),
        };
        const RINGBUF: u32 = 27;
        const DEVMAP: u32 = 14;
        const DEVMAP_HASH: u32 = 25;
        const CPUMAP: u32 = 16;
        const BPF_F_RDONLY_PROG: u32 = 1 << 7;
        match def.map_type {
            RINGBUF => {
                def.value_size = 0;
                def.max_entries = def.max_entries.div_ceil(page).next_power_of_two() * page;
            }
            // What aya creates on kernels that know program ids in these maps (5.8+); the
            // kernel adds BPF_F_RDONLY_PROG to a devmap's flags (its lookups return a
            // pointer into the map's own data), so a pinned one shows it.
            DEVMAP | DEVMAP_HASH => {
                def.value_size = 8;
                def.flags |= BPF_F_RDONLY_PROG;
            }
            CPUMAP => def.value_size = 8,
            _ => {}
        }
        out.push((name.clone(), def));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u32
}

/// The message for pins that are not this daemon's to take.
fn foreign(dir: &Path, what: &str) -> String {
    format!(
        "{} holds {what}; remove them with `xlb stop --pin-path {}` (this detaches their XDP program), \
         or set another [daemon] pin_path",
        dir.display(),
        dir.display()
    )
}

/// Checks the pin directory `dir` before loading `object`: refuses pins of
/// another configuration or of a running daemon, and plans each map.
pub fn prepare(dir: &Path, who: &Identity, object: &[u8], sizes: &[(&str, u32)]) -> anyhow::Result<PinPlan> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
    let on_bpffs = |p: &Path| sys::is_bpffs(p).unwrap_or(false);
    let usable = on_bpffs(parent) || (dir.exists() && on_bpffs(dir));
    if !usable {
        bail!(
            "pin_path {}: {} is not a BPF filesystem; mount one (`mount -t bpf bpf /sys/fs/bpf`) or set \
             [daemon] pin_path to a directory in one",
            dir.display(),
            parent.display()
        );
    }
    let fresh = !dir.exists();
    if fresh {
        std::fs::create_dir(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    }
    let (state, previous) = match StateMap::open(dir)? {
        Some(s) => {
            let prev = s.read()?;
            let Some(prev) = prev else { bail!("{}", foreign(dir, "pins without a readable xlb state")) };
            (s, Some(prev))
        }
        None => {
            let leftovers = std::fs::read_dir(dir)?.count();
            if leftovers > 0 {
                bail!("{}", foreign(dir, &format!("{leftovers} pins that are not xlb's (no `{STATE_PIN}` map)")));
            }
            (StateMap::create(dir)?, None)
        }
    };
    if let Some(prev) = &previous {
        if prev.interfaces != who.interfaces {
            bail!(
                "{}",
                foreign(
                    dir,
                    &format!(
                        "the pins of another xlb configuration ({}, interfaces {}; this one has {})",
                        prev.config,
                        prev.interfaces.join(", "),
                        who.interfaces.join(", ")
                    )
                )
            );
        }
        if prev.pid != 0 && prev.pid != std::process::id() && process_is_xlb(prev.pid) {
            bail!(
                "another xlb (pid {}) runs on the pins in {}; stop it first (SIGTERM keeps the data path, \
                 `xlb stop` removes it)",
                prev.pid,
                dir.display()
            );
        }
    }
    // Claimed: this daemon owns the pins from now on (a fresh directory has
    // its state at once, so it is never mistaken for someone else's).
    let claim = State {
        config: who.config.display().to_string(),
        interfaces: who.interfaces.clone(),
        pid: std::process::id(),
        ..previous.clone().unwrap_or_default()
    };
    state.write(&claim)?;
    // A daemon that died while replacing maps leaves `NAME__new` pins: not in use.
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(NEW_SUFFIX) {
            std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
        }
    }
    let mut maps = Vec::new();
    for (name, want) in object_maps(object, sizes)? {
        let path = dir.join(&name);
        let fate = if path.exists() {
            let old = sys::obj_get(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
            let old_def = sys::map_def(old.as_fd()).with_context(|| format!("reading {}", path.display()))?;
            match old_def.mismatch(&want) {
                None => Fate::Reused,
                Some(why) => Fate::Replaced { why, old, old_def },
            }
        } else {
            Fate::New
        };
        maps.push(PinnedMap { name, want, fate });
    }
    let mut links = BTreeMap::new();
    for iface in &who.interfaces {
        let path = link_pin(dir, iface);
        if path.exists() {
            links.insert(iface.clone(), sys::obj_get(&path).with_context(|| format!("opening {}", path.display()))?);
        }
    }
    Ok(PinPlan { dir: dir.to_path_buf(), state, previous, maps, links, who: who.clone() })
}

/// Whether a pinned conntrack table `old` can be copied into `new`: both
/// mmapable arrays of buckets of `CtSlot`s (another size rehashes every entry).
fn ct_copyable(old: &MapDef, new: &MapDef) -> bool {
    let table = |d: &MapDef| {
        d.map_type == sys::BPF_MAP_TYPE_ARRAY
            && d.value_size as usize == std::mem::size_of::<lb_common::CtBucket>()
            && d.flags & sys::BPF_F_MMAPABLE != 0
            && d.max_entries.is_power_of_two()
    };
    table(old) && table(new)
}

/// Copies the entries of conntrack table `old` (`old_buckets` buckets) into `new`
/// (each into its bucket there); `overwrite`: over an entry of the same flow.
/// Returns the entries seen and written.
fn copy_ct(
    old: std::os::fd::BorrowedFd<'_>,
    old_buckets: u32,
    new: std::os::fd::BorrowedFd<'_>,
    new_buckets: u32,
    overwrite: bool,
) -> anyhow::Result<(u64, u64)> {
    use super::ct_table::CtTable;
    let slots = |buckets: u32| buckets as usize * lb_common::CT_WAYS as usize;
    let (from, to) = (CtTable::map(old, slots(old_buckets))?, CtTable::map(new, slots(new_buckets))?);
    let (mut seen, mut written) = (0, 0);
    for i in 0..from.slots() {
        if let Some(e) = from.get(i) {
            seen += 1;
            written += u64::from(to.insert(&e.key, &e.state, overwrite));
        }
    }
    Ok((seen, written))
}

impl PinPlan {
    /// Copies the entries of each replaced hash map from the old map into
    /// the new one (`fd_of` opens the new one). `again`: a second pass after
    /// the new program took over, adding what the old one still made
    /// meanwhile without overwriting what the new one wrote.
    pub fn migrate(&self, again: bool) -> anyhow::Result<()> {
        for m in &self.maps {
            let Fate::Replaced { why, old, old_def } = &m.fate else { continue };
            let new_path = m.load_path(&self.dir);
            let ct = m.name == lb_common::maps::CONNTRACK && ct_copyable(old_def, &m.want);
            if !ct && !old_def.copyable_into(&m.want) {
                if !again {
                    log::warn!(
                        "map {}: pinned map does not match this program ({why}) and its entries cannot be \
                         copied: started empty",
                        m.name
                    );
                }
                continue;
            }
            let new = sys::obj_get(&new_path).with_context(|| format!("opening {}", new_path.display()))?;
            let flags = if again { sys::BPF_NOEXIST } else { sys::BPF_ANY };
            let (seen, written) = if ct {
                copy_ct(old.as_fd(), old_def.max_entries, new.as_fd(), m.want.max_entries, !again)
            } else {
                sys::copy_entries(old.as_fd(), new.as_fd(), old_def, flags).map_err(Into::into)
            }
            .with_context(|| format!("copying the entries of map {}", m.name))?;
            if again {
                log::info!("map {}: {written} more entries copied after the switch", m.name);
            } else {
                log::warn!(
                    "map {}: pinned map does not match this program ({why}): recreated, {written} of {seen} \
                     entries copied into the new map",
                    m.name
                );
            }
        }
        Ok(())
    }

    /// Once the new program runs: replaced maps take their old pin's name.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        for m in &mut self.maps {
            if let Fate::Replaced { .. } = m.fate {
                let (from, to) = (m.load_path(&self.dir), self.dir.join(&m.name));
                std::fs::rename(&from, &to)
                    .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
                m.fate = Fate::Reused;
            }
        }
        Ok(())
    }

    /// Names of the maps reused as they were pinned.
    pub fn reused(&self, name: &str) -> bool {
        self.maps.iter().any(|m| m.name == name && matches!(m.fate, Fate::Reused))
    }
}

/// The pid of a live xlb daemon that runs on the pins in `dir`, if any.
pub fn owner(dir: &Path) -> Option<u32> {
    let state = StateMap::open(dir).ok()??.read().ok()??;
    (state.pid != 0 && state.pid != std::process::id() && process_is_xlb(state.pid)).then_some(state.pid)
}

/// Whether process `pid` runs the xlb binary.
fn process_is_xlb(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "xlb")
}

/// `xlb stop`: detaches every pinned XDP link of `dir` and removes the
/// pins and the directory. Returns the interfaces detached (none when
/// `dir` does not exist).
pub fn remove(dir: &Path) -> anyhow::Result<Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut detached = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    // Links first: the data path stops before its maps go.
    for path in &entries {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if let Some(iface) = name.strip_prefix("link_") {
            let link = sys::obj_get(path).with_context(|| format!("opening {}", path.display()))?;
            sys::link_detach(link.as_fd()).with_context(|| format!("detaching the XDP link on {iface}"))?;
            detached.push(iface.to_string());
        }
    }
    for path in &entries {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(detached)
}
