//! External-data tensors: `location` / `offset` / `length` entries that point into files next
//! to the model. Locations must stay inside the model's folder: absolute paths, `..` escapes
//! and symlinks that lead outside are rejected, and so are ranges past the end of the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::ir::tensor::{checked_numel, elem_size};
use crate::onnx::{GraphProto, TensorProto, tensor_proto::DataLocation, tensor_proto::DataType};

/// Memory-maps each external file once and hands out zero-copy slices of it.
pub struct ExternalResolver {
    base: PathBuf,
    canonical_base: PathBuf,
    files: HashMap<PathBuf, Bytes>,
}

impl ExternalResolver {
    pub fn new(model_dir: &Path) -> Result<Self> {
        let canonical_base = model_dir
            .canonicalize()
            .map_err(|e| Error::io(model_dir, e))?;
        Ok(ExternalResolver {
            base: model_dir.to_path_buf(),
            canonical_base,
            files: HashMap::new(),
        })
    }

    /// Canonical paths of the files read so far, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.files.keys().cloned().collect();
        v.sort();
        v
    }

    /// Resolves external data in every tensor of `g` and its subgraphs.
    pub fn resolve_graph(&mut self, g: &mut GraphProto) -> Result<()> {
        for t in &mut g.initializer {
            self.resolve_tensor(t)?;
        }
        for s in &mut g.sparse_initializer {
            if let Some(v) = s.values.as_mut() {
                self.resolve_tensor(v)?;
            }
            if let Some(i) = s.indices.as_mut() {
                self.resolve_tensor(i)?;
            }
        }
        for n in &mut g.node {
            for a in &mut n.attribute {
                if let Some(t) = a.t.as_mut() {
                    self.resolve_tensor(t)?;
                }
                for t in &mut a.tensors {
                    self.resolve_tensor(t)?;
                }
                if let Some(sg) = a.g.as_mut() {
                    self.resolve_graph(sg)?;
                }
                for sg in &mut a.graphs {
                    self.resolve_graph(sg)?;
                }
            }
        }
        Ok(())
    }

    fn resolve_tensor(&mut self, t: &mut TensorProto) -> Result<()> {
        if t.data_location() != DataLocation::External {
            return Ok(());
        }
        let name = t.name().to_string();
        let err = |reason: String| Error::ExternalData {
            tensor: name.clone(),
            reason,
        };
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for kv in &t.external_data {
            match kv.key() {
                "location" => location = Some(kv.value().to_string()),
                "offset" => {
                    offset = kv
                        .value()
                        .parse()
                        .map_err(|_| err(format!("invalid offset '{}'", kv.value())))?
                }
                "length" => {
                    length = Some(
                        kv.value()
                            .parse::<u64>()
                            .map_err(|_| err(format!("invalid length '{}'", kv.value())))?,
                    )
                }
                _ => {}
            }
        }
        let location = location.ok_or_else(|| err("no 'location' entry".into()))?;
        let path = self.checked_path(&location).map_err(err)?;
        let data = match self.files.get(&path) {
            Some(d) => d.clone(),
            None => {
                let d = map_file(&path)?;
                self.files.insert(path.clone(), d.clone());
                d
            }
        };
        let file_len = data.len() as u64;
        let length = length.unwrap_or(file_len.saturating_sub(offset));
        let end = offset
            .checked_add(length)
            .filter(|&e| e <= file_len)
            .ok_or_else(|| {
                err(format!(
                    "range {offset}..{} is past the end of '{location}' ({file_len} bytes)",
                    offset as u128 + length as u128
                ))
            })?;
        let dt = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
        if let (Some(size), Some(numel)) = (elem_size(dt), checked_numel(&t.dims)) {
            let expected = numel as u128 * size as u128;
            if expected != length as u128 {
                return Err(err(format!(
                    "declares shape {:?} ({expected} bytes) but its external range holds {length} bytes",
                    t.dims
                )));
            }
        }
        t.raw_data = Some(data.slice(offset as usize..end as usize));
        t.external_data.clear();
        // As onnx.load does after reading external data: explicitly DEFAULT.
        t.data_location = Some(DataLocation::Default as i32);
        Ok(())
    }

    /// The data file for `location`, checked to lie inside the model's folder.
    fn checked_path(&self, location: &str) -> std::result::Result<PathBuf, String> {
        let rel = Path::new(location);
        if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
            return Err(format!(
                "location '{location}' is absolute; it must be relative to the model's folder"
            ));
        }
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!("location '{location}' leaves the model's folder"));
        }
        let joined = self.base.join(rel);
        let canonical = joined
            .canonicalize()
            .map_err(|e| format!("cannot open '{}': {e}", joined.display()))?;
        if !canonical.starts_with(&self.canonical_base) {
            return Err(format!(
                "location '{location}' resolves (through a symlink) outside the model's folder"
            ));
        }
        Ok(canonical)
    }
}

/// Memory-maps a whole file as `Bytes` (an empty file maps to empty bytes). The map is
/// registered for [`release_pages`] while any slice of it is alive.
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(path, std::io::Error::other("not a regular file")));
    }
    if meta.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only. Another process truncating the file while it is mapped
    // would fault, as with any memory-mapped reader; model files are not edited in place.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let map = Arc::new(map);
    let mut live = live_maps();
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(&map));
    drop(live);
    Ok(Bytes::from_owner(MapOwner(map)))
}

/// Owns a file map for `Bytes`; the registry holds only a weak reference, so the map is
/// unmapped when the last slice of it goes.
struct MapOwner(Arc<Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The file maps alive in this process.
static LIVE_MAPS: Mutex<Vec<Weak<Mmap>>> = Mutex::new(Vec::new());

fn live_maps() -> std::sync::MutexGuard<'static, Vec<Weak<Mmap>>> {
    LIVE_MAPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tells the kernel that the whole pages inside `bytes` are not needed for now, when `bytes`
/// lies in a file map made by [`map_file`] (anything else, e.g. heap memory, is left alone:
/// there `MADV_DONTNEED` would zero it). The pages of a read-only file map are clean copies of
/// the page cache, so this is safe even if they are read again: they just fault back in (from
/// the file as it is then: like any map, this assumes model files are not edited in place
/// while loaded). It keeps the resident size of a rewrite near the largest weight instead of
/// the whole input.
pub fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        let page = page_size();
        let (p, end) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        let (start, stop) = (p.next_multiple_of(page), end / page * page);
        if stop <= start {
            return;
        }
        let live = live_maps();
        for map in live.iter().filter_map(Weak::upgrade) {
            let base = map.as_ptr() as usize;
            if p >= base && end <= base + map.len() {
                // SAFETY: the range lies inside a live, read-only, file-backed private map
                // (held alive by `map` for the call); no one writes to it, and dropped pages
                // read back the same bytes from the file.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start - base,
                        stop - start,
                    )
                };
                return;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mapped = map_file(&path).unwrap();
        assert_eq!(&mapped[..], &data[..]);
        release_pages(&mapped[1000..250_000]);
        release_pages(&mapped);
        assert_eq!(&mapped[..], &data[..]);
        // Heap memory is never advised (it would be zeroed).
        let heap = data.clone();
        release_pages(&heap);
        assert_eq!(heap, data);
    }
}
