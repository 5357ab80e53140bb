//! Loading: memory-map, decode with zero-copy tensor payloads, resolve external data, lift
//! into the IR and validate.

use std::path::Path;

use bytes::Bytes;
use prost::Message;

use super::Model;
use super::external::{ExternalResolver, map_file};
use crate::error::{Error, Result};
use crate::onnx::ModelProto;

/// Loads and validates the model at `path`. Tensor payloads share the file's memory map.
pub fn load(path: impl AsRef<Path>) -> Result<Model> {
    let path = path.as_ref();
    let bytes = map_file(path)?;
    let file_bytes = bytes.len() as u64;
    let mut proto = decode(bytes, path)?;
    // prost keeps no unknown fields: a file that re-encodes to another size held fields this
    // schema does not know (or a non-canonical encoding). Worth a warning, not an error.
    let reencoded_bytes = proto.encoded_len() as u64;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut external = ExternalResolver::new(&dir)?;
    if let Some(g) = proto.graph.as_mut() {
        external.resolve_graph(g)?;
    }
    let mut model = Model::from_proto(proto).map_err(|e| with_path(e, path))?;
    model.path = Some(path.to_path_buf());
    model.external_files = external.files();
    model.file_bytes = file_bytes;
    model.reencoded_bytes = reencoded_bytes;
    Ok(model)
}

/// Decodes and validates a model held in memory. External data is not allowed here (there is
/// no folder to resolve it against).
pub fn load_bytes(bytes: Bytes) -> Result<Model> {
    let proto = decode(bytes, Path::new("<memory>"))?;
    Model::from_proto(proto)
}

fn decode(bytes: Bytes, path: &Path) -> Result<ModelProto> {
    if bytes.is_empty() {
        return Err(Error::Decode {
            path: path.into(),
            reason: "the file is empty".into(),
        });
    }
    ModelProto::decode(bytes).map_err(|e| Error::Decode {
        path: path.into(),
        reason: format!("protobuf decoding failed ({e}); the file is truncated or not ONNX"),
    })
}

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Io { .. } | Error::Decode { .. } => e,
        other => Error::Decode {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}
