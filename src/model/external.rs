//! External-data tensors: `location` / `offset` / `length` entries that point into files next
//! to the model. Locations must stay inside the model's folder: absolute paths, `..` escapes
//! and symlinks that lead outside are rejected, and so are ranges past the end of the file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

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

/// Memory-maps a whole file as `Bytes` (an empty file maps to empty bytes).
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
    Ok(Bytes::from_owner(map))
}
