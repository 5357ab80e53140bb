//! Tensor payloads that are computed while the model is written.
//!
//! Rewriting a 100 MB model is mostly producing tens of MB of int8 weights and writing them.
//! When a new initializer's bytes are a pure function of data that stays available (a
//! memory-mapped float weight and its already computed quantization parameters), they need
//! not exist before the save: the save (`model/save.rs`) computes the next pieces of a
//! payload on rayon's pool while it writes the previous ones, so computing, copying into the
//! page cache and the disk writes overlap, and the int8 copy never sits whole in memory.
//!
//! A deferred payload is an ordinary `raw_data` [`Bytes`] of the right length, so shapes,
//! sizes and the protobuf layout are all known before any value is. Its memory is a
//! private anonymous map that nothing writes: reading it gives zeros and costs no memory.
//! The map's address identifies the payload in a registry of [`Fill`]s, and the map (with
//! its registry entry) lives as long as any clone of the `Bytes`.
//!
//! Only code that asked for deferred payloads ever holds them (the quantizer makes them on
//! request); [`Graph::materialize_deferred`] turns them into ordinary bytes, and the save
//! writes them either way. A `Bytes` sliced out of a deferred payload is not recognized
//! as one: the save refuses such slices rather than write zeros.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::Graph;

/// Produces a payload piece by piece.
pub trait Fill: Send + Sync {
    /// The payload's length in bytes.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pieces start and end on multiples of this many bytes (e.g. a row), except the last
    /// piece, which ends at [`Fill::len`].
    fn granule(&self) -> usize;
    /// Writes bytes `offset .. offset + out.len()` of the payload. `offset` is a multiple of
    /// the granule, and so is `out.len()` unless the piece ends the payload.
    fn fill(&self, offset: usize, out: &mut [u8]);
    /// A description of everything the bytes depend on: equal identities give equal bytes.
    fn identity(&self) -> Vec<u8>;
}

/// Payloads shorter than this are computed at once: deferring them saves nothing.
pub const MIN_DEFERRED: usize = 64 << 10;

/// Live deferred payloads: base address -> (length, fill).
type Registry = BTreeMap<usize, (usize, Arc<dyn Fill>)>;

static REGISTRY: Mutex<Registry> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Owns the reserved map of one deferred payload and its registry entry.
struct Reserved {
    map: ZeroMap,
}

impl AsRef<[u8]> for Reserved {
    fn as_ref(&self) -> &[u8] {
        self.map.as_slice()
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        registry().remove(&(self.map.as_slice().as_ptr() as usize));
    }
}

/// A read-only private anonymous map: it reads as zeros, and since nothing can write it,
/// it takes no memory and no commit charge (`MAP_NORESERVE`), whatever its size.
#[cfg(unix)]
struct ZeroMap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the map is read-only for its whole life; sharing or sending a pointer to memory
// nobody writes is sound.
#[cfg(unix)]
unsafe impl Send for ZeroMap {}
#[cfg(unix)]
unsafe impl Sync for ZeroMap {}

#[cfg(unix)]
impl ZeroMap {
    fn new(len: usize) -> Option<Self> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; no existing
        // memory is touched. Failure is reported as MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(ZeroMap { ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

#[cfg(unix)]
impl Drop for ZeroMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slice of it outlives `self`
        // (slices borrow it through the `Bytes` that owns it).
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Elsewhere, an ordinary anonymous map (it counts toward committed memory).
#[cfg(not(unix))]
struct ZeroMap(memmap2::Mmap);

#[cfg(not(unix))]
impl ZeroMap {
    fn new(len: usize) -> Option<Self> {
        memmap2::MmapOptions::new()
            .len(len)
            .map_anon()
            .and_then(memmap2::MmapMut::make_read_only)
            .ok()
            .map(ZeroMap)
    }

    fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// A payload of `fill.len()` bytes computed when needed. Small payloads, and any payload
/// when no address space can be reserved, are computed now.
pub fn deferred(fill: Arc<dyn Fill>) -> Bytes {
    let len = fill.len();
    if len < MIN_DEFERRED {
        return Bytes::from(compute(&*fill));
    }
    let Some(map) = ZeroMap::new(len) else {
        return Bytes::from(compute(&*fill));
    };
    registry().insert(map.as_slice().as_ptr() as usize, (len, fill));
    Bytes::from_owner(Reserved { map })
}

/// What `bytes` is with respect to deferred payloads.
pub enum Lookup {
    /// Ordinary memory.
    Plain,
    /// Exactly one deferred payload.
    Whole(Arc<dyn Fill>),
    /// Part of a deferred payload (a slice of it): its values cannot be produced alone.
    Partial,
}

/// Whether `bytes` is a deferred payload.
pub fn lookup(bytes: &[u8]) -> Lookup {
    if bytes.is_empty() {
        return Lookup::Plain;
    }
    let p = bytes.as_ptr() as usize;
    let reg = registry();
    match reg.range(..=p).next_back() {
        Some((&base, (len, fill))) if p < base + len => {
            if p == base && bytes.len() == *len {
                Lookup::Whole(fill.clone())
            } else {
                Lookup::Partial
            }
        }
        _ => Lookup::Plain,
    }
}

/// The whole payload of `fill`, computed now.
pub fn compute(fill: &dyn Fill) -> Vec<u8> {
    let mut out = vec![0u8; fill.len()];
    fill.fill(0, &mut out);
    out
}

/// `bytes` with a deferred payload replaced by its values (`None` when it is not one).
pub fn materialize(bytes: &Bytes) -> Option<Bytes> {
    match lookup(bytes) {
        Lookup::Whole(fill) => Some(Bytes::from(compute(&*fill))),
        _ => None,
    }
}

/// Piece boundaries of a payload: pieces of about `target` bytes, cut on granules.
pub fn pieces(fill: &dyn Fill, target: usize) -> Vec<(usize, usize)> {
    let len = fill.len();
    let granule = fill.granule().max(1);
    let step = (target / granule).max(1) * granule;
    (0..len)
        .step_by(step)
        .map(|start| (start, (start + step).min(len)))
        .collect()
}

impl Graph {
    /// Replaces every deferred payload among the initializers of this graph and its
    /// subgraphs by its values.
    pub fn materialize_deferred(&mut self) {
        for t in self.initializers.values_mut() {
            if let Some(raw) = t.proto.raw_data.as_ref().and_then(materialize) {
                t.proto.raw_data = Some(raw);
            }
        }
        for n in &mut self.nodes {
            for s in &mut n.subgraphs {
                s.graph.materialize_deferred();
            }
        }
    }
}

/// A test payload: byte `i` is `i * 7 + seed` (mod 256), in rows of `granule` bytes.
#[cfg(test)]
pub(crate) struct Ramp {
    pub len: usize,
    pub seed: u8,
    pub granule: usize,
}

#[cfg(test)]
impl Ramp {
    pub fn expected(&self) -> Vec<u8> {
        (0..self.len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(self.seed))
            .collect()
    }
}

#[cfg(test)]
impl Fill for Ramp {
    fn len(&self) -> usize {
        self.len
    }
    fn granule(&self) -> usize {
        self.granule
    }
    fn fill(&self, offset: usize, out: &mut [u8]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = ((offset + i) as u8).wrapping_mul(7).wrapping_add(self.seed);
        }
    }
    fn identity(&self) -> Vec<u8> {
        vec![self.seed]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(len: usize, seed: u8) -> Ramp {
        Ramp {
            len,
            seed,
            granule: 10,
        }
    }

    #[test]
    fn deferred_payloads_are_found_and_computed() {
        let len = MIN_DEFERRED + 123;
        let b = deferred(Arc::new(ramp(len, 3)));
        assert_eq!(b.len(), len);
        // Reading the placeholder is harmless: zeros.
        assert!(b.iter().all(|&x| x == 0));
        assert!(matches!(lookup(&b), Lookup::Whole(_)));
        assert!(matches!(lookup(&b[1..]), Lookup::Partial));
        assert!(matches!(lookup(&b[..10]), Lookup::Partial));
        assert_eq!(materialize(&b).unwrap(), ramp(len, 3).expected());
        let clone = b.clone();
        drop(b);
        assert!(matches!(lookup(&clone), Lookup::Whole(_)));
        let addr = clone.as_ptr() as usize;
        drop(clone);
        assert!(!registry().contains_key(&addr));
    }

    #[test]
    #[cfg(unix)]
    fn huge_payloads_reserve_no_memory() {
        // 64 GiB, more than this machine has: only address space is taken (a writable map
        // of this size would be refused by the kernel's overcommit check).
        let len = 64usize << 30;
        let b = deferred(Arc::new(ramp(len, 9)));
        assert_eq!(b.len(), len);
        assert!(matches!(lookup(&b), Lookup::Whole(_)));
        assert_eq!((b[0], b[len / 2], b[len - 1]), (0, 0, 0));
    }

    #[test]
    fn small_payloads_are_computed_at_once() {
        let b = deferred(Arc::new(ramp(100, 1)));
        assert!(matches!(lookup(&b), Lookup::Plain));
        assert_eq!(&b[..], &ramp(100, 1).expected()[..]);
        assert!(matches!(lookup(&[1u8, 2][..]), Lookup::Plain));
        assert!(matches!(lookup(&[][..]), Lookup::Plain));
    }

    #[test]
    fn pieces_cut_on_granules_and_cover_the_payload() {
        let r = ramp(95, 0);
        assert_eq!(
            pieces(&r, 25),
            vec![(0, 20), (20, 40), (40, 60), (60, 80), (80, 95)]
        );
        assert_eq!(
            pieces(&r, 3),
            (0..95)
                .step_by(10)
                .map(|s| (s, (s + 10).min(95)))
                .collect::<Vec<_>>()
        );
        // Pieces filled separately equal the whole.
        let mut whole = vec![0u8; 95];
        for (a, b) in pieces(&r, 25) {
            r.fill(a, &mut whole[a..b]);
        }
        assert_eq!(whole, r.expected());
    }
}
