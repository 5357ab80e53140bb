//! Shared pieces of the recurrent rewriters (LSTM, GRU, RNN).
//!
//! - [`Builder`]: emits nodes and initializers with fresh names, with opset-aware helpers for
//!   the ops whose signature changed (Unsqueeze axes and Split sizes became inputs at opset 13).
//! - [`RecurrentAttrs`]: the attributes and shapes all three ops share (ONNX LSTM/GRU/RNN:
//!   `X` is `[seq, batch, in]`, or `[batch, seq, in]` with `layout = 1`; `W` is
//!   `[D, G*H, in]`, `R` is `[D, G*H, H]`, `B` is `[D, 2*G*H]` = `[Wb, Rb]`; with G gates
//!   per op: 4 for LSTM (iofc), 3 for GRU (zrh), 1 for RNN).
//! - [`QuantRecurrent`]: `W` or `R` quantized per direction (per-tensor, scales `[D]`) or per
//!   gate row (per-channel: viewed as `[D*G*H, K]`, scales `[D, G*H]`), as onnxruntime's
//!   `quantize_dynamic` does it.
//! - [`rewrite_scan_form`]: the standard-ops form. The input projection of every time step is
//!   one quantized matmul hoisted out of the recurrence
//!   (`DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`, plus the hoistable biases);
//!   each direction's recurrence is a `Scan` (opset >= 9 semantics) whose body the op's
//!   rewriter builds; `Y`, `Y_h` (and `Y_c`) are assembled from the Scan outputs.
//! - [`rewrite_weight_only`]: int8 `W`/`R` with `DequantizeLinear` feeding the float op.

use std::ops::Range;

use ndarray::{ArrayD, ArrayView3, Axis, Ix3, IxDyn, s};

use crate::ir::attrs::{attr_int, attr_ints, attr_tensor};
use crate::ir::graph::Subgraph;
use crate::ir::{Graph, NameGen, Node, Tensor};
use crate::onnx::attribute_proto::AttributeType;
use crate::onnx::tensor_proto::DataType;
use crate::onnx::{
    AttributeProto, GraphProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto,
    type_proto,
};

use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};
use super::weights::{QValues, QuantizedWeight, WeightQuantOptions, WeightType, quantize_weight};

/// Emits nodes and initializers under fresh names.
pub struct Builder<'n> {
    pub names: &'n mut NameGen,
    pub opset: i64,
    pub nodes: Vec<Node>,
    pub inits: Vec<Tensor>,
    prefix: String,
}

impl<'n> Builder<'n> {
    pub fn new(names: &'n mut NameGen, opset: i64, prefix: &str) -> Self {
        Builder {
            names,
            opset,
            nodes: Vec::new(),
            inits: Vec::new(),
            prefix: prefix.to_string(),
        }
    }

    /// A builder for a subgraph (e.g. a Scan body) drawing from the same name pool.
    pub fn sub(&mut self, prefix: &str) -> Builder<'_> {
        Builder::new(self.names, self.opset, prefix)
    }

    /// A fresh value name `<prefix>/<what>`.
    pub fn fresh(&mut self, what: &str) -> String {
        self.names.fresh(&format!("{}/{what}", self.prefix))
    }

    /// Appends a default-domain node; returns its output names.
    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        self.op_in("", op, inputs, n_out, attrs)
    }

    /// Appends a node of `domain`; returns its output names.
    pub fn op_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        n_out: usize,
        attrs: Vec<AttributeProto>,
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n_out).map(|_| self.fresh(op)).collect();
        self.node_with_outputs(domain, op, inputs, outs.clone(), attrs);
        outs
    }

    /// Appends a node with the given output names ("" for unused optional outputs).
    pub fn node_with_outputs(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        outputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) {
        let name = self.names.fresh(&format!("{}/{op}", self.prefix));
        let mut n = Node::new(
            name,
            op,
            domain,
            inputs.iter().map(|s| s.to_string()).collect(),
            outputs,
        );
        n.proto.attribute = attrs;
        self.nodes.push(n);
    }

    pub fn op1(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op(op, inputs, 1, attrs).remove(0)
    }

    /// A new initializer named `<prefix>/<what>`.
    pub fn init_with(&mut self, what: &str, make: impl FnOnce(&str) -> Tensor) -> String {
        let name = self.fresh(what);
        self.inits.push(make(&name));
        name
    }

    pub fn init_f32(&mut self, what: &str, dims: &[usize], values: Vec<f32>) -> String {
        self.init_with(what, |n| Tensor::from_vec(n, dims, values))
    }

    pub fn init_i64(&mut self, what: &str, dims: &[usize], values: Vec<i64>) -> String {
        self.init_with(what, |n| Tensor::from_vec(n, dims, values))
    }

    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        if self.opset >= 13 {
            let a = self.init_i64("axes", &[axes.len()], axes.to_vec());
            self.op1("Unsqueeze", &[x, &a], vec![])
        } else {
            self.op1("Unsqueeze", &[x], vec![attr_ints("axes", axes.to_vec())])
        }
    }

    pub fn split(&mut self, x: &str, axis: i64, sizes: &[i64]) -> Vec<String> {
        if self.opset >= 13 {
            let s = self.init_i64("split", &[sizes.len()], sizes.to_vec());
            self.op("Split", &[x, &s], sizes.len(), vec![attr_int("axis", axis)])
        } else {
            self.op(
                "Split",
                &[x],
                sizes.len(),
                vec![attr_int("axis", axis), attr_ints("split", sizes.to_vec())],
            )
        }
    }

    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        if xs.len() == 1 {
            return xs[0].to_string();
        }
        self.op1("Concat", xs, vec![attr_int("axis", axis)])
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op1("Transpose", &[x], vec![attr_ints("perm", perm.to_vec())])
    }

    pub fn cast(&mut self, x: &str, to: DataType) -> String {
        self.op1("Cast", &[x], vec![attr_int("to", to as i64)])
    }

    /// `x[index]` along `axis`, dropping that axis (Gather with a scalar index).
    pub fn take(&mut self, x: &str, index: i64, axis: i64) -> String {
        let i = self.init_i64("index", &[], vec![index]);
        self.op1("Gather", &[x, &i], vec![attr_int("axis", axis)])
    }

    /// Float zeros of shape `[x.shape[axis], n]` (for absent initial states; the batch size
    /// may be symbolic, so the shape is taken at run time).
    pub fn zeros_like_rows(&mut self, x: &str, axis: i64, n: usize) -> String {
        let shape = self.op1("Shape", &[x], vec![]);
        let idx = self.init_i64("batch_axis", &[1], vec![axis]);
        let batch = self.op1("Gather", &[&shape, &idx], vec![attr_int("axis", 0)]);
        let hidden = self.init_i64("hidden", &[1], vec![n as i64]);
        let dims = self.op1("Concat", &[&batch, &hidden], vec![attr_int("axis", 0)]);
        let zero = Tensor::from_vec("value", &[1], vec![0f32]);
        self.op1(
            "ConstantOfShape",
            &[&dims],
            vec![attr_tensor("value", zero)],
        )
    }

    /// `DynamicQuantizeLinear(x)` -> (uint8 values, scale, zero point).
    pub fn dynamic_quantize(&mut self, x: &str) -> [String; 3] {
        let o = self.op("DynamicQuantizeLinear", &[x], 3, vec![]);
        [o[0].clone(), o[1].clone(), o[2].clone()]
    }

    /// `Cast(MatMulInteger(xq, w, xzp, wzp), float) * (xs * ws)`: a quantized product in float.
    pub fn int_matmul(&mut self, xq: &[String; 3], w: &DirWeight) -> String {
        let mm = self.op1(
            "MatMulInteger",
            &[&xq[0], &w.values, &xq[2], &w.zero_point],
            vec![],
        );
        let f = self.cast(&mm, DataType::Float);
        let s = self.op1("Mul", &[&xq[1], &w.scale], vec![]);
        self.op1("Mul", &[&f, &s], vec![])
    }

    /// Renames the value `from` (a node output of this builder) to `to` everywhere.
    pub fn rename(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for v in n.proto.input.iter_mut().chain(n.proto.output.iter_mut()) {
                if v == from {
                    *v = to.to_string();
                }
            }
        }
    }
}

/// One direction's quantized weight as initializers: values `[K, N]` (transposed for
/// `x @ w`), scale scalar or `[N]`, zero point scalar or `[N]`.
pub struct DirWeight {
    pub values: String,
    pub scale: String,
    pub zero_point: String,
}

/// A float constant input, as f32 (fp16 constants are widened).
pub fn const_f32(ctx: &NodeCtx, node: &crate::ir::Node, idx: usize) -> Result<ArrayD<f32>, Skip> {
    let name = node
        .input(idx)
        .ok_or_else(|| Skip(format!("input {idx} is absent")))?;
    let t = (ctx.constants)(name).ok_or_else(|| Skip(format!("'{name}' is not a constant")))?;
    let bad = |e: crate::Error| Skip(format!("'{name}': {e}"));
    match t.data_type().map_err(bad)? {
        DataType::Float => t.to_array::<f32>().map_err(bad),
        DataType::Float16 => Ok(t.to_array::<half::f16>().map_err(bad)?.mapv(|v| v.to_f32())),
        d => Err(Skip(format!(
            "'{name}' is {}, not float",
            crate::ir::tensor::dtype_name(d as i32)
        ))),
    }
}

/// A quantized `W` or `R`: values `[D, rows, cols]` with per-direction or per-row scales.
pub struct QuantRecurrent {
    pub dirs: usize,
    pub rows: usize,
    pub cols: usize,
    pub per_channel: bool,
    pub q: QuantizedWeight,
}

macro_rules! with_q {
    ($q:expr, $a:ident => $body:expr) => {
        match $q {
            QValues::I8($a) => $body,
            QValues::U8($a) => $body,
        }
    };
}

impl QuantRecurrent {
    /// Quantizes `w` `[D, rows, cols]`: per direction, or per row when `per_channel`.
    pub fn new(w: ArrayView3<f32>, per_channel: bool, opts: &WeightQuantOptions) -> Self {
        let (dirs, rows, cols) = w.dim();
        let mut q = if per_channel {
            let flat = w
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[dirs * rows, cols]))
                .expect("same element count");
            quantize_weight(flat.view(), Some(0), opts)
        } else {
            quantize_weight(w.into_dyn(), Some(0), opts)
        };
        let shape = IxDyn(&[dirs, rows, cols]);
        let reshape = "quantize_weight keeps the element count";
        q.values = match q.values {
            QValues::I8(a) => QValues::I8(a.into_shape_with_order(shape).expect(reshape)),
            QValues::U8(a) => QValues::U8(a.into_shape_with_order(shape).expect(reshape)),
        };
        QuantRecurrent {
            dirs,
            rows,
            cols,
            per_channel,
            q,
        }
    }

    fn per_dir(&self) -> usize {
        if self.per_channel { self.rows } else { 1 }
    }

    pub fn scales(&self, d: usize) -> &[f32] {
        let n = self.per_dir();
        &self.q.scales[d * n..(d + 1) * n]
    }

    pub fn zero_points(&self, d: usize) -> &[i32] {
        let n = self.per_dir();
        &self.q.zero_points[d * n..(d + 1) * n]
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.q.values, QValues::I8(_))
    }

    /// Values of direction `d` transposed to `[cols, rows]`.
    pub fn dir_values_t(&self, name: &str, d: usize, rows: Range<usize>) -> Tensor {
        with_q!(&self.q.values, a => {
            let a = a.view().into_dimensionality::<Ix3>().expect("rank 3");
            let t = a.index_axis(Axis(0), d);
            let t = t.slice(s![rows.clone(), ..]).reversed_axes();
            Tensor::from_array(name, &t.as_standard_layout().view().into_dyn())
        })
    }

    /// Values of every direction transposed to `[D, cols, rows]` (DynamicQuantizeLSTM).
    pub fn all_values_t(&self, name: &str) -> Tensor {
        with_q!(&self.q.values, a => {
            let t = a.view().permuted_axes(IxDyn(&[0, 2, 1]));
            Tensor::from_array(name, &t.as_standard_layout().view())
        })
    }

    /// Values as stored by ONNX, `[D, rows, cols]`.
    pub fn values(&self, name: &str) -> Tensor {
        self.q.values_tensor(name)
    }

    /// Scales `[D]` per-tensor or `[D, rows]` per-channel.
    pub fn scale_tensor(&self, name: &str) -> Tensor {
        self.q.scale_tensor(name, &self.param_shape())
    }

    pub fn zero_point_tensor(&self, name: &str) -> Tensor {
        self.q.zero_point_tensor(name, &self.param_shape())
    }

    fn param_shape(&self) -> Vec<usize> {
        if self.per_channel {
            vec![self.dirs, self.rows]
        } else {
            vec![self.dirs]
        }
    }

    /// Direction `d` as initializers for `x @ w`: values `[cols, rows]`, scale and zero point
    /// as scalars when they are one value, else `[rows]`.
    pub fn dir_weight(&self, b: &mut Builder, what: &str, d: usize) -> DirWeight {
        self.dir_weight_rows(b, what, d, 0..self.rows)
    }

    /// Like [`QuantRecurrent::dir_weight`] for a range of rows (e.g. some of the gates).
    pub fn dir_weight_rows(
        &self,
        b: &mut Builder,
        what: &str,
        d: usize,
        rows: Range<usize>,
    ) -> DirWeight {
        let values = b.init_with(&format!("{what}_quantized"), |n| {
            self.dir_values_t(n, d, rows.clone())
        });
        let pick = |v: &[f32]| -> Vec<f32> {
            if self.per_channel {
                v[rows.clone()].to_vec()
            } else {
                v.to_vec()
            }
        };
        let scales = pick(self.scales(d));
        let scale = if scales.iter().all(|&s| s == scales[0]) {
            b.init_f32(&format!("{what}_scale"), &[], vec![scales[0]])
        } else {
            b.init_f32(&format!("{what}_scale"), &[scales.len()], scales)
        };
        let zps: Vec<i32> = if self.per_channel {
            self.zero_points(d)[rows.clone()].to_vec()
        } else {
            self.zero_points(d).to_vec()
        };
        let dims: Vec<usize> = if zps.iter().all(|&z| z == zps[0]) {
            vec![]
        } else {
            vec![zps.len()]
        };
        let take = if dims.is_empty() { 1 } else { zps.len() };
        let zero_point = if self.is_int8() {
            let v: Vec<i8> = zps[..take].iter().map(|&z| z as i8).collect();
            b.init_with(&format!("{what}_zero_point"), |n| {
                Tensor::from_vec(n, &dims, v)
            })
        } else {
            let v: Vec<u8> = zps[..take].iter().map(|&z| z as u8).collect();
            b.init_with(&format!("{what}_zero_point"), |n| {
                Tensor::from_vec(n, &dims, v)
            })
        };
        DirWeight {
            values,
            scale,
            zero_point,
        }
    }
}

/// Which recurrent op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RnnKind {
    Lstm,
    Gru,
    Rnn,
}

impl RnnKind {
    pub fn gates(self) -> usize {
        match self {
            RnnKind::Lstm => 4,
            RnnKind::Gru => 3,
            RnnKind::Rnn => 1,
        }
    }

    /// Recurrent states: h (and c for LSTM).
    pub fn states(self) -> usize {
        if self == RnnKind::Lstm { 2 } else { 1 }
    }

    pub fn default_activations(self) -> &'static [&'static str] {
        match self {
            RnnKind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            RnnKind::Gru => &["Sigmoid", "Tanh"],
            RnnKind::Rnn => &["Tanh"],
        }
    }
}

/// Attributes and shapes shared by LSTM, GRU and RNN.
pub struct RecurrentAttrs {
    pub kind: RnnKind,
    pub hidden: usize,
    pub input: usize,
    pub dirs: usize,
    /// 0: forward, 1: reverse, 2: bidirectional.
    pub direction: String,
    pub layout: i64,
    pub fp16: bool,
    /// `W` `[D, G*H, in]`, `R` `[D, G*H, H]`, `B` `[D, 2*G*H]` (zeros when absent), as f32.
    pub w: ArrayD<f32>,
    pub r: ArrayD<f32>,
    pub b: ArrayD<f32>,
}

impl RecurrentAttrs {
    pub fn read(node: &Node, ctx: &NodeCtx, kind: RnnKind) -> Result<Self, Skip> {
        let err = |e: crate::Error| Skip(e.to_string());
        let w = const_f32(ctx, node, 1)?;
        let r = const_f32(ctx, node, 2)?;
        let g = kind.gates();
        if w.ndim() != 3 || r.ndim() != 3 {
            return Err(Skip("W and R must have rank 3".into()));
        }
        let (dirs, gh, input) = (w.shape()[0], w.shape()[1], w.shape()[2]);
        let hidden = r.shape()[2];
        if gh != g * hidden || r.shape()[0] != dirs || r.shape()[1] != g * hidden {
            return Err(Skip(format!(
                "W {:?} and R {:?} do not fit {g} gates of hidden size {hidden}",
                w.shape(),
                r.shape()
            )));
        }
        if let Some(h) = node.attr::<i64>("hidden_size").map_err(err)?
            && h as usize != hidden
        {
            return Err(Skip(format!("hidden_size {h} does not match R's {hidden}")));
        }
        let direction = node
            .attr_or("direction", "forward".to_string())
            .map_err(err)?;
        let want_dirs = match direction.as_str() {
            "forward" | "reverse" => 1,
            "bidirectional" => 2,
            d => return Err(Skip(format!("unknown direction '{d}'"))),
        };
        if want_dirs != dirs {
            return Err(Skip(format!(
                "direction {direction} needs {want_dirs} weight directions, W has {dirs}"
            )));
        }
        let b = match node.input(3) {
            Some(_) => {
                let b = const_f32(ctx, node, 3)?;
                if b.shape() != [dirs, 2 * g * hidden] {
                    return Err(Skip(format!("B has shape {:?}", b.shape())));
                }
                b
            }
            None => ArrayD::zeros(IxDyn(&[dirs, 2 * g * hidden])),
        };
        let layout = node.attr_or("layout", 0i64).map_err(err)?;
        let x = node.input(0).unwrap_or("");
        let x_type = ctx.types.get(x).map(|t| t.dtype());
        let w_type = node
            .input(1)
            .and_then(|n| (ctx.constants)(n))
            .and_then(|t| t.data_type().ok());
        let fp16 = match x_type.filter(|t| *t != DataType::Undefined).or(w_type) {
            Some(DataType::Float) => false,
            Some(DataType::Float16) => true,
            Some(t) => {
                return Err(Skip(format!(
                    "X is {}, not float",
                    crate::ir::tensor::dtype_name(t as i32)
                )));
            }
            None => return Err(Skip("X has an unknown element type".into())),
        };
        Ok(RecurrentAttrs {
            kind,
            hidden,
            input,
            dirs,
            direction,
            layout,
            fp16,
            w,
            r,
            b,
        })
    }

    /// Whether direction `d` runs backwards in time.
    pub fn reverse(&self, d: usize) -> bool {
        self.direction == "reverse" || d == 1
    }

    /// Custom activations (anything but the op's defaults, compared case-insensitively).
    pub fn custom_activations(&self, node: &Node) -> bool {
        let defaults = self.kind.default_activations();
        match node.attr::<Vec<String>>("activations") {
            Ok(Some(a)) => a.chunks(defaults.len()).any(|c| {
                c.len() != defaults.len()
                    || c.iter()
                        .zip(defaults)
                        .any(|(x, d)| !x.eq_ignore_ascii_case(d))
            }),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    pub fn w3(&self) -> ArrayView3<'_, f32> {
        self.w.view().into_dimensionality().expect("rank 3")
    }

    pub fn r3(&self) -> ArrayView3<'_, f32> {
        self.r.view().into_dimensionality().expect("rank 3")
    }

    /// `Wb` (`which = 0`) or `Rb` (`which = 1`) of direction `d`, `[G*H]`.
    pub fn bias(&self, d: usize, which: usize) -> Vec<f32> {
        let n = self.kind.gates() * self.hidden;
        (0..n).map(|i| self.b[[d, which * n + i]]).collect()
    }
}

/// A float `[?, n]` value info (batch left unknown).
pub fn float_info(name: &str, n: usize) -> ValueInfoProto {
    let dims = vec![
        tensor_shape_proto::Dimension::default(),
        tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(n as i64)),
            ..Default::default()
        },
    ];
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds the body of one direction's Scan: gets the state inputs and the projected input of
/// the step `[batch, G*H]`, returns the new states (h first).
pub type BodyFn<'a> =
    dyn FnMut(&mut Builder, usize, &[String], &str) -> Result<Vec<String>, Skip> + 'a;

/// The standard-ops form: hoisted quantized input projection + one Scan per direction.
///
/// `hoisted_bias(d)` is the bias added to the projection of direction `d` (`[G*H]`: `Wb`
/// plus whatever part of `Rb` the cell can move out of the recurrence).
pub fn rewrite_scan_form(
    node: &Node,
    ctx: &mut NodeCtx,
    a: &RecurrentAttrs,
    hoisted_bias: &dyn Fn(usize) -> Vec<f32>,
    body: &mut BodyFn,
    note: String,
) -> RewriteResult {
    let g = a.kind.gates();
    let h = a.hidden;
    let wq = QuantRecurrent::new(a.w3(), ctx.per_channel, &ctx.weights);
    let prefix = node.display_name().to_string();
    let mut b = Builder::new(ctx.names, ctx.opset, &prefix);

    // X as float32 [seq, batch, in].
    let mut x = node.input(0).unwrap_or_default().to_string();
    if a.fp16 {
        x = b.cast(&x, DataType::Float);
    }
    if a.layout == 1 {
        x = b.transpose(&x, &[1, 0, 2]);
    }
    let xq = b.dynamic_quantize(&x);

    // Initial states as float32 [D, batch, H], or None.
    let mut init_states: Vec<Option<String>> = Vec::new();
    for k in 0..a.kind.states() {
        init_states.push(node.input(5 + k).map(|s| {
            let mut s = s.to_string();
            if a.fp16 {
                s = b.cast(&s, DataType::Float);
            }
            if a.layout == 1 {
                s = b.transpose(&s, &[1, 0, 2]);
            }
            s
        }));
    }
    let mut zeros: Option<String> = None;

    let mut ys = Vec::new();
    let mut finals: Vec<Vec<String>> = vec![Vec::new(); a.kind.states()];
    for d in 0..a.dirs {
        let wd = wq.dir_weight(&mut b, &format!("W{d}"), d);
        let mut xp = b.int_matmul(&xq, &wd);
        let bias = hoisted_bias(d);
        if bias.iter().any(|&v| v != 0.0) {
            let bn = b.init_f32(&format!("bias{d}"), &[g * h], bias);
            xp = b.op1("Add", &[&xp, &bn], vec![]);
        }
        let mut scan_inputs = Vec::new();
        for s in &init_states {
            scan_inputs.push(match s {
                Some(s) => b.take(s, d as i64, 0),
                None => match &zeros {
                    Some(z) => z.clone(),
                    None => {
                        let z = b.zeros_like_rows(&x, 1, h);
                        zeros = Some(z.clone());
                        z
                    }
                },
            });
        }
        scan_inputs.push(xp);

        // The body.
        let body_graph = {
            let mut sb = b.sub(&format!("{prefix}/scan{d}"));
            let state_in: Vec<String> = (0..a.kind.states())
                .map(|k| sb.fresh(&format!("state{k}_in")))
                .collect();
            let x_t = sb.fresh("x_t");
            let state_out = body(&mut sb, d, &state_in, &x_t)?;
            let y_t = sb.op1("Identity", &[&state_out[0]], vec![]);
            let mut inputs: Vec<ValueInfoProto> =
                state_in.iter().map(|s| float_info(s, h)).collect();
            inputs.push(float_info(&x_t, g * h));
            let mut outputs: Vec<ValueInfoProto> =
                state_out.iter().map(|s| float_info(s, h)).collect();
            outputs.push(float_info(&y_t, h));
            let gname = sb.fresh("body");
            let mut graph = Graph {
                proto: GraphProto {
                    name: Some(gname),
                    input: inputs,
                    output: outputs,
                    ..Default::default()
                },
                nodes: std::mem::take(&mut sb.nodes),
                initializers: Default::default(),
            };
            for t in std::mem::take(&mut sb.inits) {
                graph.add_initializer(t);
            }
            graph
        };

        let outs: Vec<String> = (0..=a.kind.states())
            .map(|k| b.fresh(&format!("scan{d}_out{k}")))
            .collect();
        let mut attrs = vec![
            attr_int("num_scan_inputs", 1),
            AttributeProto {
                name: Some("body".into()),
                r#type: Some(AttributeType::Graph as i32),
                ..Default::default()
            },
        ];
        if a.reverse(d) {
            attrs.push(attr_ints("scan_input_directions", vec![1]));
            attrs.push(attr_ints("scan_output_directions", vec![1]));
        }
        let ins: Vec<&str> = scan_inputs.iter().map(String::as_str).collect();
        b.node_with_outputs("", "Scan", &ins, outs.clone(), attrs);
        b.nodes
            .last_mut()
            .expect("just pushed")
            .subgraphs
            .push(Subgraph {
                attr: "body".into(),
                index: None,
                graph: body_graph,
            });
        for (k, f) in finals.iter_mut().enumerate() {
            f.push(outs[k].clone());
        }
        ys.push(outs[a.kind.states()].clone());
    }

    // Y [seq, D, batch, H] (layout 1: [batch, seq, D, H]).
    let mut results: Vec<(usize, String)> = Vec::new();
    if node.outputs().first().is_some_and(|o| !o.is_empty()) {
        let parts: Vec<String> = ys.iter().map(|y| b.unsqueeze(y, &[1])).collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let mut y = b.concat(&refs, 1);
        if a.layout == 1 {
            y = b.transpose(&y, &[2, 0, 1, 3]);
        }
        results.push((0, y));
    }
    // Y_h, Y_c [D, batch, H] (layout 1: [batch, D, H]).
    for (k, f) in finals.iter().enumerate() {
        if node.outputs().get(k + 1).is_some_and(|o| !o.is_empty()) {
            let parts: Vec<String> = f.iter().map(|s| b.unsqueeze(s, &[0])).collect();
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let mut s = b.concat(&refs, 0);
            if a.layout == 1 {
                s = b.transpose(&s, &[1, 0, 2]);
            }
            results.push((k + 1, s));
        }
    }
    for (i, v) in results {
        let target = node.outputs()[i].clone();
        let v = if a.fp16 {
            b.cast(&v, DataType::Float16)
        } else {
            v
        };
        b.rename(&v, &target);
    }
    Ok(Replacement {
        nodes: b.nodes,
        initializers: b.inits,
        opsets: vec![],
        note,
    })
}

/// Weight-only: `W` and `R` as int8/uint8 initializers, `DequantizeLinear` in front of the
/// float op (which keeps every attribute, layout included).
pub fn rewrite_weight_only(node: &Node, ctx: &mut NodeCtx, a: &RecurrentAttrs) -> RewriteResult {
    let prefix = node.display_name().to_string();
    let mut b = Builder::new(ctx.names, ctx.opset, &prefix);
    let mut new = node.clone();
    new.proto.name = Some(b.names.fresh(&format!("{prefix}_weight_only")));
    for (idx, what, w) in [(1usize, "W", a.w3()), (2, "R", a.r3())] {
        let q = QuantRecurrent::new(w, ctx.per_channel, &ctx.weights);
        let deq = dequantize(&mut b, &q, what);
        let deq = if a.fp16 {
            b.cast(&deq, DataType::Float16)
        } else {
            deq
        };
        new.proto.input[idx] = deq;
    }
    let note = format!(
        "weight-only {} {} (DequantizeLinear + float {})",
        if ctx.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        type_name(&ctx.weights),
        node.op_type()
    );
    b.nodes.push(new);
    Ok(Replacement {
        nodes: b.nodes,
        initializers: b.inits,
        opsets: vec![],
        note,
    })
}

/// Float `[D, rows, cols]` from a quantized weight. Per-axis DequantizeLinear needs opset 13;
/// below that, and for the two-axis per-channel scales, the dequantization is spelled out
/// with Cast/Sub/Mul over broadcast scale and zero point tensors.
fn dequantize(b: &mut Builder, q: &QuantRecurrent, what: &str) -> String {
    let (d, rows, cols) = (q.dirs, q.rows, q.cols);
    if !q.per_channel && (b.opset >= 13 || d == 1) {
        let values = b.init_with(&format!("{what}_quantized"), |n| q.values(n));
        let (scale, zp, attrs) = if d == 1 {
            let s = b.init_f32(&format!("{what}_scale"), &[], vec![q.q.scales[0]]);
            let z = zp_init(b, q, what, &[]);
            (s, z, vec![])
        } else {
            let s = b.init_with(&format!("{what}_scale"), |n| q.scale_tensor(n));
            let z = b.init_with(&format!("{what}_zero_point"), |n| q.zero_point_tensor(n));
            (s, z, vec![attr_int("axis", 0)])
        };
        return b.op1("DequantizeLinear", &[&values, &scale, &zp], attrs);
    }
    if q.per_channel && b.opset >= 13 {
        // Per row: values viewed as [D*rows, cols], axis 0, then reshaped back.
        let flat = b.init_with(&format!("{what}_quantized"), |n| {
            let mut t = q.values(n);
            t.proto.dims = vec![(d * rows) as i64, cols as i64];
            t
        });
        let s = b.init_with(&format!("{what}_scale"), |n| {
            let mut t = q.scale_tensor(n);
            t.proto.dims = vec![(d * rows) as i64];
            t
        });
        let z = b.init_with(&format!("{what}_zero_point"), |n| {
            let mut t = q.zero_point_tensor(n);
            t.proto.dims = vec![(d * rows) as i64];
            t
        });
        let deq = b.op1(
            "DequantizeLinear",
            &[&flat, &s, &z],
            vec![attr_int("axis", 0)],
        );
        let shape = b.init_i64("shape", &[3], vec![d as i64, rows as i64, cols as i64]);
        return b.op1("Reshape", &[&deq, &shape], vec![]);
    }
    // Spelled out: (float(q) - zp) * scale, with scale/zp shaped [D, 1, 1] or [D, rows, 1].
    let values = b.init_with(&format!("{what}_quantized"), |n| q.values(n));
    let pshape = if q.per_channel {
        vec![d, rows, 1]
    } else {
        vec![d, 1, 1]
    };
    let s = b.init_f32(&format!("{what}_scale"), &pshape, q.q.scales.clone());
    let zf: Vec<f32> = q.q.zero_points.iter().map(|&z| z as f32).collect();
    let f = b.cast(&values, DataType::Float);
    let centered = if zf.iter().any(|&z| z != 0.0) {
        let z = b.init_f32(&format!("{what}_zero_point"), &pshape, zf);
        b.op1("Sub", &[&f, &z], vec![])
    } else {
        f
    };
    b.op1("Mul", &[&centered, &s], vec![])
}

fn zp_init(b: &mut Builder, q: &QuantRecurrent, what: &str, dims: &[usize]) -> String {
    let z = q.q.zero_points[0];
    if q.is_int8() {
        b.init_with(&format!("{what}_zero_point"), |n| {
            Tensor::from_vec(n, dims, vec![z as i8])
        })
    } else {
        b.init_with(&format!("{what}_zero_point"), |n| {
            Tensor::from_vec(n, dims, vec![z as u8])
        })
    }
}

pub fn type_name(o: &WeightQuantOptions) -> &'static str {
    match o.weight_type {
        WeightType::Int8 => "int8",
        WeightType::Uint8 => "uint8",
    }
}
