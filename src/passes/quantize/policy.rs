//! The quantization policy: which nodes the rewrite takes, and for each node it leaves float,
//! why. `inspect` shows these decisions before anything is rewritten; `rewrite` acts on them.
//!
//! Default thresholds (settable on the CLI): a MatMul/Gemm/Conv weight needs at least
//! [`DEFAULT_MIN_WEIGHT_ELEMENTS`] elements and an inner (reduction) dimension of at least
//! [`DEFAULT_MIN_INNER_DIM`]; below that the quantize/dequantize work costs more than the int8
//! product saves. Recurrent weights and embedding tables use the same element threshold.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::ir::shape::{ValueType, infer_types};
use crate::ir::{Graph, Node};
use crate::onnx::tensor_proto::DataType;

use super::recurrent_common::{RnnKind, scan_form_limit};

pub const DEFAULT_MIN_WEIGHT_ELEMENTS: usize = 16_384;
pub const DEFAULT_MIN_INNER_DIM: usize = 64;

/// Op families the rewrite knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum OpKind {
    MatMul,
    Gemm,
    Lstm,
    Gru,
    Rnn,
    Gather,
    Conv,
    /// com.microsoft Attention (onnxruntime's fused self-attention).
    Attention,
    /// com.microsoft EmbedLayerNormalization (onnxruntime's fused BERT embeddings).
    EmbedLayerNorm,
}

impl OpKind {
    pub fn of(node: &Node) -> Option<OpKind> {
        if node.domain() == "com.microsoft" {
            return match node.op_type() {
                "Attention" => Some(OpKind::Attention),
                "EmbedLayerNormalization" => Some(OpKind::EmbedLayerNorm),
                _ => None,
            };
        }
        if !node.domain().is_empty() {
            return None;
        }
        Some(match node.op_type() {
            "MatMul" => OpKind::MatMul,
            "Gemm" => OpKind::Gemm,
            "LSTM" => OpKind::Lstm,
            "GRU" => OpKind::Gru,
            "RNN" => OpKind::Rnn,
            "Gather" => OpKind::Gather,
            "Conv" => OpKind::Conv,
            _ => return None,
        })
    }

    pub fn parse(s: &str) -> Option<OpKind> {
        Some(match s.to_ascii_lowercase().as_str() {
            "matmul" => OpKind::MatMul,
            "gemm" => OpKind::Gemm,
            "lstm" => OpKind::Lstm,
            "gru" => OpKind::Gru,
            "rnn" => OpKind::Rnn,
            "gather" => OpKind::Gather,
            "conv" => OpKind::Conv,
            "attention" => OpKind::Attention,
            "embedlayernormalization" => OpKind::EmbedLayerNorm,
            _ => return None,
        })
    }

    /// Every family but Conv (onnxruntime has no fast ConvInteger: see [`super::conv`]).
    pub fn default_set() -> BTreeSet<OpKind> {
        use OpKind::*;
        [
            MatMul,
            Gemm,
            Lstm,
            Gru,
            Rnn,
            Gather,
            Attention,
            EmbedLayerNorm,
        ]
        .into_iter()
        .collect()
    }
}

/// How recurrent nodes are rewritten.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LstmMode {
    /// com.microsoft DynamicQuantizeLSTM (onnxruntime).
    #[default]
    Ort,
    /// Standard ONNX ops only: hoisted int8 input projection + a Scan recurrence.
    Onnx,
    /// int8 weights + DequantizeLinear feeding the float op.
    WeightOnly,
}

/// The policy's knobs.
#[derive(Clone, Debug)]
pub struct PolicyOptions {
    pub ops: BTreeSet<OpKind>,
    /// Original node names to leave float (the first output's name for a node without one).
    pub exclude: HashSet<String>,
    /// When set, only these node names are quantized.
    pub include: Option<HashSet<String>>,
    pub lstm_mode: LstmMode,
    pub min_weight_elements: usize,
    pub min_inner_dim: usize,
    pub subgraphs: bool,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            ops: OpKind::default_set(),
            exclude: HashSet::new(),
            include: None,
            lstm_mode: LstmMode::Ort,
            min_weight_elements: DEFAULT_MIN_WEIGHT_ELEMENTS,
            min_inner_dim: DEFAULT_MIN_INNER_DIM,
            subgraphs: true,
        }
    }
}

/// The decision for one node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Decision {
    /// Names of the enclosing control-flow nodes, outermost first ("" for the main graph).
    pub scope: String,
    pub node: String,
    pub op_type: String,
    pub quantize: bool,
    /// Why it is skipped, or how it will be quantized.
    pub reason: String,
}

/// Values of `g` that are constant: initializers (here or in enclosing scopes), Constant
/// outputs, `Shape` of values whose requested dims are statically known, and outputs of
/// deterministic nodes whose inputs are all constant (the chains exporters emit around
/// weights, which the rewrite folds first).
pub fn constant_values(
    g: &Graph,
    outer_consts: &HashSet<String>,
    types: &HashMap<String, ValueType>,
) -> HashSet<String> {
    let mut c: HashSet<String> = outer_consts.clone();
    // An initializer that is also a graph input is only a default: callers may override it.
    c.extend(
        g.initializers
            .keys()
            .filter(|k| !g.proto.input.iter().any(|i| i.name() == k.as_str()))
            .cloned(),
    );
    let order = g.topo_order().unwrap_or_default();
    for i in order {
        let n = &g.nodes[i];
        if n.op_type() == "Shape" && n.domain().is_empty() && static_shape_slice(n, types).is_some()
        {
            c.extend(n.outputs().iter().cloned());
            continue;
        }
        let foldable = n.domain().is_empty()
            && n.subgraphs.is_empty()
            && !matches!(
                n.op_type(),
                "RandomNormal"
                    | "RandomUniform"
                    | "RandomNormalLike"
                    | "RandomUniformLike"
                    | "Multinomial"
                    | "Bernoulli"
            )
            && n.inputs().iter().all(|i| i.is_empty() || c.contains(i));
        if foldable {
            c.extend(n.outputs().iter().filter(|o| !o.is_empty()).cloned());
        }
    }
    c
}

/// The dims a `Shape` node returns, when they are all statically known.
pub fn static_shape_slice(n: &Node, types: &HashMap<String, ValueType>) -> Option<Vec<i64>> {
    let shape = types.get(n.input(0)?)?.shape.as_ref()?;
    let r = shape.len() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(n.attr::<i64>("start").ok()?.unwrap_or(0));
    let end = clamp(n.attr::<i64>("end").ok()?.unwrap_or(r));
    shape
        .get(start..end.max(start))?
        .iter()
        .map(|d| d.known())
        .collect()
}

struct Ctx<'a> {
    opts: &'a PolicyOptions,
    consts: HashSet<String>,
    types: HashMap<String, ValueType>,
}

/// Decisions for every node of a family the rewrite knows, in this graph and (unless disabled)
/// its subgraphs.
pub fn decide(graph: &Graph, opts: &PolicyOptions) -> Vec<Decision> {
    let mut out = Vec::new();
    decide_in(graph, opts, "", &HashSet::new(), &HashMap::new(), &mut out);
    out
}

fn decide_in(
    g: &Graph,
    opts: &PolicyOptions,
    scope: &str,
    outer_consts: &HashSet<String>,
    outer_types: &HashMap<String, ValueType>,
    out: &mut Vec<Decision>,
) {
    let types = infer_types(g, outer_types);
    let ctx = Ctx {
        opts,
        consts: constant_values(g, outer_consts, &types),
        types,
    };
    // What `rewrite` does by default (`inspect` describes it): MatMul/Gemm weights uint8 per
    // channel, activations as `--activations auto` decides for this graph.
    let attention = super::activation_choice::has_attention(g, &|v| ctx.consts.contains(v));
    for n in &g.nodes {
        if let Some(kind) = OpKind::of(n) {
            let mut verdict = ctx.node_verdict(g, n, kind);
            if let (Ok(v), OpKind::MatMul | OpKind::Gemm) = (&mut verdict, kind) {
                let narrow = n
                    .input(1)
                    .and_then(|w| ctx.shape_of(g, w))
                    .is_some_and(|d| {
                        d.len() == 2
                            && !super::activation_choice::per_token_pays(
                                d[0] as usize,
                                d[1] as usize,
                            )
                    });
                v.push_str(match (attention, narrow) {
                    (true, false) => ", per-token activations (self-attention)",
                    (true, true) => {
                        ", per-tensor activations (self-attention, but a narrow weight)"
                    }
                    (false, _) => ", per-tensor activations",
                });
            }
            out.push(Decision {
                scope: scope.to_string(),
                node: n.display_name().to_string(),
                op_type: n.op_type().to_string(),
                quantize: verdict.is_ok(),
                reason: verdict.unwrap_or_else(|e| e),
            });
        }
        for s in &n.subgraphs {
            let inner = if scope.is_empty() {
                format!("{}/{}", n.display_name(), s.attr)
            } else {
                format!("{scope}/{}/{}", n.display_name(), s.attr)
            };
            if !opts.subgraphs {
                s.graph.visit(&mut |sg: &Graph| {
                    for m in &sg.nodes {
                        if OpKind::of(m).is_some() {
                            out.push(Decision {
                                scope: inner.clone(),
                                node: m.display_name().to_string(),
                                op_type: m.op_type().to_string(),
                                quantize: false,
                                reason: "inside a subgraph (subgraph quantization is off)".into(),
                            });
                        }
                    }
                });
                continue;
            }
            decide_in(&s.graph, opts, &inner, &ctx.consts, &ctx.types, out);
        }
    }
}

type Verdict = Result<String, String>;

impl Ctx<'_> {
    fn shape_of(&self, g: &Graph, name: &str) -> Option<Vec<i64>> {
        if let Some(t) = g.initializer(name) {
            return Some(t.dims().to_vec());
        }
        self.types.get(name)?.static_shape()
    }

    fn elem_of(&self, name: &str) -> DataType {
        self.types
            .get(name)
            .map_or(DataType::Undefined, ValueType::dtype)
    }

    fn node_verdict(&self, g: &Graph, n: &Node, kind: OpKind) -> Verdict {
        let o = self.opts;
        if !o.ops.contains(&kind) {
            return Err(format!("{:?} is not in the quantized op set (--ops)", kind));
        }
        // A node without a name is known by its first output (as in the report).
        if o.exclude.contains(n.display_name()) {
            return Err("excluded by --exclude".into());
        }
        if let Some(inc) = &o.include
            && !inc.contains(n.display_name())
        {
            return Err("not in --include".into());
        }
        match kind {
            OpKind::MatMul | OpKind::Gemm => self.linear_verdict(g, n, kind),
            OpKind::Lstm | OpKind::Gru | OpKind::Rnn => self.rnn_verdict(g, n, kind),
            OpKind::Gather => self.gather_verdict(g, n),
            OpKind::Conv => self.conv_verdict(g, n),
            OpKind::Attention => self.attention_verdict(g, n),
            OpKind::EmbedLayerNorm => self.embed_layer_norm_verdict(g, n),
        }
    }

    fn weight(&self, g: &Graph, n: &Node, idx: usize, what: &str) -> Result<Vec<i64>, String> {
        let name = n.input(idx).ok_or_else(|| format!("has no {what} input"))?;
        if !self.consts.contains(name) {
            return Err(format!("{what} '{name}' is not a constant"));
        }
        self.shape_of(g, name)
            .ok_or_else(|| format!("{what} '{name}' has an unknown shape"))
    }

    fn float_input(&self, n: &Node, idx: usize) -> Result<&'static str, String> {
        let name = n.input(idx).unwrap_or("");
        match self.elem_of(name) {
            DataType::Float => Ok(""),
            DataType::Float16 => Ok(" (fp16: cast to float32 around the int8 product)"),
            DataType::Undefined => Err(format!("input '{name}' has an unknown element type")),
            t => Err(format!(
                "input '{name}' is {}, not float",
                crate::ir::tensor::dtype_name(t as i32)
            )),
        }
    }

    fn size_check(&self, numel: i64, inner: Option<i64>) -> Result<(), String> {
        let o = self.opts;
        if (numel as usize) < o.min_weight_elements {
            return Err(format!(
                "weight has {numel} elements, below --min-weight-elements {}",
                o.min_weight_elements
            ));
        }
        if let Some(k) = inner
            && (k as usize) < o.min_inner_dim
        {
            return Err(format!(
                "inner dimension {k} is below --min-inner-dim {}",
                o.min_inner_dim
            ));
        }
        Ok(())
    }

    fn linear_verdict(&self, g: &Graph, n: &Node, kind: OpKind) -> Verdict {
        let w = self.weight(g, n, 1, "weight")?;
        if w.len() != 2 {
            return Err(format!("weight has rank {}, expected 2", w.len()));
        }
        let fp16 = self.float_input(n, 0)?;
        let trans_b = n.attr::<i64>("transB").ok().flatten().unwrap_or(0) != 0;
        let k = if kind == OpKind::Gemm && trans_b {
            w[1]
        } else {
            w[0]
        };
        self.size_check(w[0] * w[1], Some(k))?;
        if kind == OpKind::Gemm
            && let Some(c) = n.input(2)
            && !self.consts.contains(c)
        {
            return Err(format!("bias '{c}' is not a constant"));
        }
        Ok(format!("uint8 per-channel weight {}x{}{fp16}", w[0], w[1]))
    }

    fn attention_verdict(&self, g: &Graph, n: &Node) -> Verdict {
        if let Some(why) = super::attention::unsupported(n) {
            return Err(why);
        }
        let w = self.weight(g, n, 1, "weight")?;
        if w.len() != 2 {
            return Err(format!("weight has rank {}, expected 2", w.len()));
        }
        if !self.float_input(n, 0)?.is_empty() {
            return Err("float16 Attention is left float (QAttention is float32 only)".into());
        }
        self.size_check(w[0] * w[1], Some(w[0]))?;
        Ok(format!(
            "QAttention (com.microsoft), per-tensor activations, weight {}x{}",
            w[0], w[1]
        ))
    }

    fn embed_layer_norm_verdict(&self, g: &Graph, n: &Node) -> Verdict {
        if let Some(why) = super::embed_layer_norm::unsupported(n) {
            return Err(why);
        }
        let word = self.weight(g, n, 2, "word_embedding")?;
        let name = n.input(2).unwrap_or("");
        if self.elem_of(name) != DataType::Float {
            return Err(format!(
                "word_embedding is {}, not float32 (QEmbedLayerNormalization is float32 only)",
                crate::ir::tensor::dtype_name(self.elem_of(name) as i32)
            ));
        }
        for (i, what) in [(3, "position_embedding"), (5, "gamma"), (6, "beta")] {
            self.weight(g, n, i, what)?;
        }
        if n.input(4).is_some() {
            self.weight(g, n, 4, "segment_embedding")?;
        }
        self.size_check(word.iter().product(), None)?;
        Ok(format!(
            "QEmbedLayerNormalization (com.microsoft), uint8 tables with one scale each, word table {}",
            word.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join("x")
        ))
    }

    /// A recurrent weight's shape: known, or (behind a constant chain that shape inference
    /// cannot follow) the one the op's attributes and input imply.
    fn rnn_weight(
        &self,
        g: &Graph,
        n: &Node,
        idx: usize,
        what: &str,
        gates: i64,
    ) -> Result<Vec<i64>, String> {
        match self.weight(g, n, idx, what) {
            Ok(s) => Ok(s),
            Err(e) if e.ends_with("unknown shape") => {
                let h = n
                    .attr::<i64>("hidden_size")
                    .ok()
                    .flatten()
                    .ok_or(e.clone())?;
                let dirs = if n.attr::<String>("direction").ok().flatten().as_deref()
                    == Some("bidirectional")
                {
                    2
                } else {
                    1
                };
                let cols = if idx == 2 {
                    h
                } else {
                    let x = self
                        .types
                        .get(n.input(0).unwrap_or(""))
                        .and_then(|t| t.shape.clone())
                        .ok_or(e.clone())?;
                    x.last().and_then(|d| d.known()).ok_or(e)?
                };
                Ok(vec![dirs, gates * h, cols])
            }
            Err(e) => Err(e),
        }
    }

    fn rnn_verdict(&self, g: &Graph, n: &Node, kind: OpKind) -> Verdict {
        let gates = match kind {
            OpKind::Lstm => 4,
            OpKind::Gru => 3,
            _ => 1,
        };
        let w = self.rnn_weight(g, n, 1, "W", gates)?;
        let r = self.rnn_weight(g, n, 2, "R", gates)?;
        if let Some(b) = n.input(3)
            && !self.consts.contains(b)
        {
            return Err(format!("bias '{b}' is not a constant"));
        }
        let fp16 = self.float_input(n, 0)?;
        let numel = w.iter().product::<i64>() + r.iter().product::<i64>();
        self.size_check(numel, None)?;
        let mode = self.opts.lstm_mode;
        let rk = match kind {
            OpKind::Lstm => RnnKind::Lstm,
            OpKind::Gru => RnnKind::Gru,
            _ => RnnKind::Rnn,
        };
        let layout = if n.attr::<i64>("layout").ok().flatten().unwrap_or(0) == 1 {
            ", layout 1 via Transposes"
        } else {
            ""
        };
        let effective = if kind != OpKind::Lstm && mode == LstmMode::Ort {
            // onnxruntime has no int8 GRU/RNN op: the portable form is used.
            LstmMode::Onnx
        } else {
            mode
        };
        match effective {
            // DynamicQuantizeLSTM runs the float LSTM's code for activations, clip,
            // input_forget, sequence_lens and peepholes (tests/rewrite_rnn.rs checks them
            // against the float LSTM in onnxruntime).
            LstmMode::Ort => Ok(format!(
                "DynamicQuantizeLSTM (int8 W {:?}, R {:?}){layout}{fp16}",
                w, r
            )),
            LstmMode::Onnx => {
                if let Some(why) = scan_form_limit(n, rk) {
                    let alt = if kind == OpKind::Lstm {
                        "--lstm ort or weight-only"
                    } else {
                        "--lstm weight-only"
                    };
                    return Err(format!("{why}; use {alt}"));
                }
                if kind == OpKind::Lstm
                    && let Some(p) = n.input(7)
                    && !self.consts.contains(p)
                {
                    return Err(format!(
                        "peepholes '{p}' are not a constant (the Scan form needs them)"
                    ));
                }
                let via = if mode == LstmMode::Ort {
                    " (onnxruntime has no int8 GRU/RNN op)"
                } else {
                    ""
                };
                Ok(format!(
                    "standard-op Scan form{via} (int8 W {:?}, R {:?}){layout}{fp16}",
                    w, r
                ))
            }
            LstmMode::WeightOnly => Ok(format!("weight-only int8 (W {:?}, R {:?}){fp16}", w, r)),
        }
    }

    fn gather_verdict(&self, g: &Graph, n: &Node) -> Verdict {
        let table = self.weight(g, n, 0, "table")?;
        let axis = n.attr::<i64>("axis").ok().flatten().unwrap_or(0);
        if axis != 0 {
            return Err(format!("gathers along axis {axis}, not 0"));
        }
        if table.len() != 2 {
            return Err(format!("table has rank {}, expected 2", table.len()));
        }
        let name = n.input(0).unwrap_or("");
        match self.elem_of(name) {
            DataType::Float | DataType::Float16 => {}
            t => {
                return Err(format!(
                    "table is {}, not float",
                    crate::ir::tensor::dtype_name(t as i32)
                ));
            }
        }
        if n.input(1).is_some_and(|i| self.consts.contains(i)) {
            return Err("indices are constant (folded instead)".into());
        }
        self.size_check(table[0] * table[1], None)?;
        Ok(format!(
            "int8 table {}x{} with per-row scales",
            table[0], table[1]
        ))
    }

    fn conv_verdict(&self, g: &Graph, n: &Node) -> Verdict {
        let w = self.weight(g, n, 1, "weight")?;
        let fp16 = self.float_input(n, 0)?;
        let k: i64 = w.iter().skip(1).product();
        self.size_check(w.iter().product(), Some(k))?;
        Ok(format!("ConvInteger weight {:?}{fp16}", w))
    }
}
