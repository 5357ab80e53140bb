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
    ModelProto::decode(bytes).map_err(|e| {
        let msg = e.to_string();
        // prost's message names every enclosing field, several kilobytes for a deep model.
        let reason = if msg.ends_with(RECURSION_LIMIT_REACHED) {
            format!(
                "subgraphs nested deeper than {MAX_SUBGRAPH_NESTING} levels (If/Loop/Scan bodies \
                 within bodies; the protobuf decoder stops at {PROTOBUF_RECURSION_LIMIT} nested \
                 messages)"
            )
        } else {
            format!("protobuf decoding failed ({msg}); the file is truncated or not ONNX")
        };
        Error::Decode {
            path: path.into(),
            reason,
        }
    })
}

/// prost's limit on nested messages (its `RECURSION_LIMIT`, fixed unless the
/// `no-recursion-limit` feature is on); a deeper file is refused, not a stack overflow.
pub const PROTOBUF_RECURSION_LIMIT: usize = 100;

/// The end of prost's error message when that limit stops the decoding.
const RECURSION_LIMIT_REACHED: &str = "recursion limit reached";

/// The deepest nesting of subgraphs (an If branch holding an If, ...) a model may have: the
/// model and main graph take two levels of messages, and every subgraph three (node,
/// attribute, graph), with two more for a tensor (a Constant's value) in the deepest body.
pub const MAX_SUBGRAPH_NESTING: usize = (PROTOBUF_RECURSION_LIMIT - 2 - 2) / 3;

fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::Io { .. } | Error::Decode { .. } => e,
        other => Error::Decode {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}
