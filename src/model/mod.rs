//! Models on disk: loading (memory-mapped, external data resolved, validated) and saving
//! (atomic, inline or with external data).

mod external;
mod load;
mod prefetch;
mod save;

use std::collections::HashSet;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::onnx::{ModelProto, OperatorSetIdProto};

pub use external::release_pages;
pub use load::{load, load_bytes};
pub use save::{ExternalDataMode, SaveOptions, SaveProgress, Saved, save, write_atomic};

/// IR versions this build reads: 3 (onnx 1.0) to 14 (onnx 1.23).
pub const MIN_IR_VERSION: i64 = 3;
pub const MAX_IR_VERSION: i64 = 14;
/// Highest default-domain opset in onnx 1.23.
pub const MAX_ONNX_OPSET: i64 = 28;
/// Highest opsets known for the other domains we understand.
pub const MAX_ML_OPSET: i64 = 5;
pub const MAX_MS_OPSET: i64 = 1;

/// A loaded model: the graph in the IR, and the rest of the `ModelProto` as it was.
#[derive(Clone, Debug)]
pub struct Model {
    /// Everything but the graph (`proto.graph` is `None`).
    pub proto: ModelProto,
    pub graph: Graph,
    /// Where the model came from, if it came from a file.
    pub path: Option<PathBuf>,
    /// External data files the model read (absolute, canonical paths).
    pub external_files: Vec<PathBuf>,
    /// The serialized size the file had (0 when built in memory).
    pub file_bytes: u64,
    /// The size the decoded model re-encodes to, before external data is resolved.
    pub reencoded_bytes: u64,
}

impl Model {
    /// Lifts a `ModelProto` into the IR and validates it.
    pub fn from_proto(mut proto: ModelProto) -> Result<Self> {
        let graph = proto
            .graph
            .take()
            .ok_or_else(|| Error::invalid("the model has no graph"))?;
        let graph = Graph::from_proto(graph)?;
        let model = Model {
            proto,
            graph,
            path: None,
            external_files: Vec::new(),
            file_bytes: 0,
            reencoded_bytes: 0,
        };
        model.validate()?;
        Ok(model)
    }

    /// The complete `ModelProto`.
    pub fn to_proto(&self) -> ModelProto {
        let mut p = self.proto.clone();
        p.graph = Some(self.graph.to_proto());
        p
    }

    /// A warning when saving may not reproduce the file's bytes: it held fields unknown to
    /// the onnx 1.23 schema (which are dropped) or used a non-canonical encoding.
    pub fn reencode_warning(&self) -> Option<String> {
        (self.file_bytes != 0 && self.file_bytes != self.reencoded_bytes).then(|| {
            format!(
                "the file is {} bytes but re-encodes to {}: fields unknown to the onnx 1.23 schema, if any, are not kept",
                self.file_bytes, self.reencoded_bytes
            )
        })
    }

    pub fn ir_version(&self) -> i64 {
        self.proto.ir_version()
    }

    /// The opset imported for `domain` ("" or "ai.onnx" for the default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let norm = |d: &str| {
            if d == "ai.onnx" {
                String::new()
            } else {
                d.to_string()
            }
        };
        let want = norm(domain);
        self.proto
            .opset_import
            .iter()
            .find(|o| norm(o.domain()) == want)
            .map(|o| o.version())
    }

    /// Adds (or raises) an opset import, e.g. `com.microsoft` 1 when emitting contrib ops.
    pub fn require_opset(&mut self, domain: &str, version: i64) {
        match self
            .proto
            .opset_import
            .iter_mut()
            .find(|o| o.domain() == domain)
        {
            Some(o) if o.version() >= version => {}
            Some(o) => o.version = Some(version),
            None => self.proto.opset_import.push(OperatorSetIdProto {
                domain: Some(domain.to_string()),
                version: Some(version),
            }),
        }
    }

    /// Checks versions and graph structure.
    pub fn validate(&self) -> Result<()> {
        let ir = self.ir_version();
        if !(MIN_IR_VERSION..=MAX_IR_VERSION).contains(&ir) {
            return Err(Error::Unsupported(format!(
                "IR version {ir} (this build reads IR versions {MIN_IR_VERSION} to {MAX_IR_VERSION})"
            )));
        }
        if self.proto.opset_import.is_empty() {
            return Err(Error::invalid("the model imports no opset"));
        }
        for o in &self.proto.opset_import {
            let (domain, max) = match o.domain() {
                "" | "ai.onnx" => ("ai.onnx", MAX_ONNX_OPSET),
                "ai.onnx.ml" => ("ai.onnx.ml", MAX_ML_OPSET),
                "com.microsoft" => ("com.microsoft", MAX_MS_OPSET),
                _ => continue,
            };
            if o.version() < 1 || o.version() > max {
                return Err(Error::Unsupported(format!(
                    "opset {} of domain {domain} (this build knows versions 1 to {max})",
                    o.version()
                )));
            }
        }
        // A model of only ai.onnx.ml (or training) ops need not import the default domain.
        if self.opset("").is_none() {
            let mut default_node = None;
            self.graph.visit(&mut |g| {
                if default_node.is_none() {
                    default_node = g
                        .nodes
                        .iter()
                        .find(|n| matches!(n.domain(), "" | "ai.onnx"))
                        .map(|n| n.display_name().to_string());
                }
            });
            if let Some(n) = default_node {
                return Err(Error::invalid(format!(
                    "node '{n}' is in the default ONNX domain, which the model does not import"
                )));
            }
        }
        self.graph.validate(&HashSet::new())
    }
}
