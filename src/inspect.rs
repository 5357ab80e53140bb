//! `onnx-dynq inspect`: a model's versions, interface, op histogram (subgraphs included),
//! initializer sizes, and the quantization policy's decision for every candidate node.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::Graph;
use crate::ir::shape::ValueType;
use crate::ir::tensor::dtype_name;
use crate::model::Model;
use crate::onnx::ValueInfoProto;
use crate::passes::fuse::{FuseReport, fuse};
use crate::passes::quantize::policy::{Decision, PolicyOptions, decide};

#[derive(Debug, Serialize)]
pub struct IoInfo {
    pub name: String,
    pub dtype: String,
    pub shape: String,
}

#[derive(Debug, Serialize)]
pub struct InitializerInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct OpsetInfo {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub path: String,
    pub ir_version: i64,
    pub opsets: Vec<OpsetInfo>,
    pub producer: String,
    pub file_bytes: u64,
    pub inputs: Vec<IoInfo>,
    pub outputs: Vec<IoInfo>,
    pub node_count: usize,
    /// Op type (prefixed with its domain when not the default one) -> count, subgraphs included.
    pub op_histogram: BTreeMap<String, usize>,
    pub subgraph_count: usize,
    /// Largest first.
    pub initializers: Vec<InitializerInfo>,
    pub initializer_bytes: usize,
    pub quantizable: Vec<Decision>,
    pub skipped: Vec<Decision>,
    /// How often each cleanup/fusion pass would fire in `rewrite` (a dry run on a copy), and
    /// the Linear units after it; absent when the passes fail on this model (see warnings).
    pub fusion: Option<FuseReport>,
    pub warnings: Vec<String>,
}

fn io_info(v: &ValueInfoProto) -> IoInfo {
    let t = ValueType::from_value_info(v).unwrap_or_default();
    IoInfo {
        name: v.name().to_string(),
        dtype: if t.elem == 0 {
            "?".into()
        } else {
            dtype_name(t.elem)
        },
        shape: t.shape_string(),
    }
}

pub fn inspect(model: &Model, policy: &PolicyOptions) -> InspectReport {
    let g = &model.graph;
    let mut hist = BTreeMap::new();
    let mut initializers = Vec::new();
    let mut node_count = 0;
    let mut graphs = 0;
    g.visit(&mut |sg: &Graph| {
        graphs += 1;
        for n in &sg.nodes {
            node_count += 1;
            let key = match n.domain() {
                "" => n.op_type().to_string(),
                d => format!("{d}.{}", n.op_type()),
            };
            *hist.entry(key).or_insert(0) += 1;
        }
        for (name, t) in &sg.initializers {
            initializers.push(InitializerInfo {
                name: name.clone(),
                dtype: dtype_name(t.proto.data_type()),
                shape: t.dims().to_vec(),
                bytes: t.byte_len(),
            });
        }
    });
    initializers.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    let (quantizable, skipped): (Vec<_>, Vec<_>) =
        decide(g, policy).into_iter().partition(|d| d.quantize);
    let mut warnings: Vec<String> = model.reencode_warning().into_iter().collect();
    // Tensor payloads are shared (`Bytes`), so the copy costs metadata only.
    let fusion = match fuse(&mut model.clone()) {
        Ok(r) => Some(r),
        Err(e) => {
            warnings.push(format!("the fusion passes fail on this model: {e}"));
            None
        }
    };
    InspectReport {
        path: model
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ir_version: model.ir_version(),
        opsets: model
            .proto
            .opset_import
            .iter()
            .map(|o| OpsetInfo {
                domain: match o.domain() {
                    "" => "ai.onnx".into(),
                    d => d.into(),
                },
                version: o.version(),
            })
            .collect(),
        producer: format!(
            "{} {}",
            model.proto.producer_name(),
            model.proto.producer_version()
        )
        .trim()
        .to_string(),
        file_bytes: model.file_bytes,
        inputs: g.real_inputs().map(io_info).collect(),
        outputs: g.outputs().iter().map(io_info).collect(),
        node_count,
        op_histogram: hist,
        subgraph_count: graphs - 1,
        initializer_bytes: initializers.iter().map(|i| i.bytes).sum(),
        initializers,
        quantizable,
        skipped,
        fusion,
        warnings,
    }
}

fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.2} MB", b as f64 / 1e6),
        b if b >= 1 << 10 => format!("{:.1} KB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

impl InspectReport {
    /// Human-readable text.
    pub fn to_text(&self, max_initializers: usize) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model: {}", self.path);
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|o| format!("{} {}", o.domain, o.version))
            .collect();
        let _ = writeln!(
            s,
            "ir_version: {}   opsets: {}   producer: {}",
            self.ir_version,
            opsets.join(", "),
            if self.producer.is_empty() {
                "-"
            } else {
                &self.producer
            }
        );
        let _ = writeln!(s, "inputs:");
        for i in &self.inputs {
            let _ = writeln!(s, "  {} {} {}", i.name, i.dtype, i.shape);
        }
        let _ = writeln!(s, "outputs:");
        for o in &self.outputs {
            let _ = writeln!(s, "  {} {} {}", o.name, o.dtype, o.shape);
        }
        let _ = writeln!(
            s,
            "ops ({} nodes, {} subgraphs):",
            self.node_count, self.subgraph_count
        );
        let mut ops: Vec<_> = self.op_histogram.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        for (op, n) in ops {
            let _ = writeln!(s, "  {n:>6}  {op}");
        }
        let _ = writeln!(
            s,
            "initializers ({} tensors, {}):",
            self.initializers.len(),
            human_bytes(self.initializer_bytes)
        );
        for i in self.initializers.iter().take(max_initializers) {
            let _ = writeln!(
                s,
                "  {:>10}  {} {} {:?}",
                human_bytes(i.bytes),
                i.name,
                i.dtype,
                i.shape
            );
        }
        if self.initializers.len() > max_initializers {
            let _ = writeln!(
                s,
                "  ... {} more",
                self.initializers.len() - max_initializers
            );
        }
        let _ = writeln!(s, "quantizable ({}):", self.quantizable.len());
        for d in &self.quantizable {
            let _ = writeln!(s, "  {} {}: {}", d.op_type, qualified(d), d.reason);
        }
        let _ = writeln!(s, "left float ({}):", self.skipped.len());
        for d in &self.skipped {
            let _ = writeln!(s, "  {} {}: {}", d.op_type, qualified(d), d.reason);
        }
        if let Some(f) = &self.fusion {
            let _ = writeln!(s, "fusion passes (as rewrite runs them):");
            for p in &f.passes {
                let _ = writeln!(s, "  {:>6}  {}", p.fired, p.pass);
            }
            let u = &f.units;
            let _ = writeln!(
                s,
                "  Linear units after fusion: {} ({} with bias, {} with activation)",
                u.linear, u.with_bias, u.with_activation
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

fn qualified(d: &Decision) -> String {
    if d.scope.is_empty() {
        d.node.clone()
    } else {
        format!("{}/{}", d.scope, d.node)
    }
}
