//! Shared pieces of the recurrent rewriters (LSTM, GRU, RNN).
//!
//! - [`RecurrentAttrs`]: the attributes and shapes all three ops share (ONNX LSTM/GRU/RNN:
//!   `X` is `[seq, batch, in]`, or `[batch, seq, in]` with `layout = 1`; `W` is
//!   `[D, G*H, in]`, `R` is `[D, G*H, H]`, `B` is `[D, 2*G*H]` = `[Wb, Rb]`; with G gates
//!   per op: 4 for LSTM (iofc), 3 for GRU (zrh), 1 for RNN).
//! - [`QuantRecurrent`]: `W` or `R` quantized per direction (per-tensor, scales `[D]`) or per
//!   gate row (per-channel: viewed as `[D*G*H, K]`, scales `[D, G*H]`), as onnxruntime's
//!   `quantize_dynamic` does it.
//! - [`scan_form_limit`]: what the standard-op Scan form (recurrent_scan.rs) cannot express;
//!   the policy reports the same reasons.
//!
//! The forms themselves: recurrent_scan.rs (standard ops), recurrent_weight_only.rs, and
//! DynamicQuantizeLSTM in lstm.rs.

use std::ops::Range;

use ndarray::{ArrayD, Axis, Ix3, IxDyn, s};

use crate::ir::{Node, Tensor};
use crate::onnx::tensor_proto::DataType;

use super::recurrent_build::{Activation, Builder, DirWeight};
use super::rewrite::{NodeCtx, Skip};
use super::transposed::transpose_columns;
use super::weights::{
    QValues, QuantizedWeight, WeightQuantOptions, WeightSrc, WeightType, quantize_weight,
};

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

/// A float constant input as a quantization source: float32 read in place (from the mapped
/// file: the recurrent weights are most of an LSTM model, and copying them to f32 arrays
/// was a sixth of a rewrite's time), float16 widened to an owned copy.
pub fn const_weight<'a>(
    ctx: &NodeCtx<'a>,
    node: &crate::ir::Node,
    idx: usize,
) -> Result<WeightSrc<'a>, Skip> {
    let name = node
        .input(idx)
        .ok_or_else(|| Skip(format!("input {idx} is absent")))?;
    let t = (ctx.constants)(name).ok_or_else(|| Skip(format!("'{name}' is not a constant")))?;
    let bad = |e: crate::Error| Skip(format!("'{name}': {e}"));
    match t.data_type().map_err(bad)? {
        DataType::Float => WeightSrc::from_tensor(t).map_err(bad),
        _ => Ok(WeightSrc::from_array(const_f32(ctx, node, idx)?)),
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
    ///
    /// # Panics
    /// If `w` is not rank 3 (callers pass [`RecurrentAttrs::w3`] or `r3`, checked on read).
    pub fn new<'w>(
        w: impl Into<WeightSrc<'w>>,
        per_channel: bool,
        opts: &WeightQuantOptions,
    ) -> Self {
        let w = w.into();
        let &[dirs, rows, cols] = w.shape() else {
            panic!("recurrent weight of shape {:?} is not rank 3", w.shape())
        };
        // Both are quantized along the first axis of the row-major values: per direction as
        // `[D, rows, cols]`, per row as `[D*rows, cols]`.
        let shape = if per_channel {
            vec![dirs * rows, cols]
        } else {
            vec![dirs, rows, cols]
        };
        let view = w.reshaped(&shape).expect("same element count");
        let mut q = quantize_weight(view, Some(0), opts);
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
        let (per, cols) = (self.rows * self.cols, self.cols);
        let dims = [cols, rows.len()];
        with_q!(&self.q.values, a => match a.as_slice() {
            Some(v) => {
                let block = &v[d * per + rows.start * cols..d * per + rows.end * cols];
                Tensor::from_vec(name, &dims, transpose_dirs(block, 1, rows.len(), cols))
            }
            None => {
                let a = a.view().into_dimensionality::<Ix3>().expect("rank 3");
                let t = a.index_axis(Axis(0), d);
                let t = t.slice(s![rows.clone(), ..]).reversed_axes();
                Tensor::from_array(name, &t.as_standard_layout().view().into_dyn())
            }
        })
    }

    /// Values of every direction transposed to `[D, cols, rows]` (DynamicQuantizeLSTM).
    pub fn all_values_t(&self, name: &str) -> Tensor {
        with_q!(&self.q.values, a => match a.as_slice() {
            Some(v) => Tensor::from_vec(
                name,
                &[self.dirs, self.cols, self.rows],
                transpose_dirs(v, self.dirs, self.rows, self.cols),
            ),
            None => {
                let t = a.view().permuted_axes(IxDyn(&[0, 2, 1]));
                Tensor::from_array(name, &t.as_standard_layout().view())
            }
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

/// Row-major `[dirs, rows, cols]` to `[dirs, cols, rows]`, in tiles so that both sides stay
/// in cache (ndarray's generic strided copy of the permuted view was ~3% of a rewrite of the
/// LM, a per-element tiled loop still ~7%).
fn transpose_dirs<T: bytemuck::Pod>(v: &[T], dirs: usize, rows: usize, cols: usize) -> Vec<T> {
    // The values are 8-bit: the byte transpose of transposed.rs (8x8 register tiles, in
    // parallel) does it.
    assert_eq!(std::mem::size_of::<T>(), 1, "quantized values are 8-bit");
    let bytes: &[u8] = bytemuck::cast_slice(v);
    let mut out = vec![0u8; bytes.len()];
    let per = rows * cols;
    if per > 0 {
        for (src, dst) in bytes.chunks(per).zip(out.chunks_mut(per)).take(dirs) {
            transpose_columns(src, rows, cols, 0, dst);
        }
    }
    bytemuck::cast_vec(out)
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

/// The activation functions of every direction (`kind.default_activations().len()` per
/// direction, forward first), from the node's attributes or the defaults.
pub fn activations(node: &Node, kind: RnnKind) -> Result<Vec<Activation>, String> {
    let per_dir = kind.default_activations().len();
    let dirs = match node.attr::<String>("direction") {
        Ok(Some(d)) if d == "bidirectional" => 2,
        Ok(_) => 1,
        Err(e) => return Err(e.to_string()),
    };
    let names: Vec<String> = match node.attr::<Vec<String>>("activations") {
        Ok(Some(a)) if !a.is_empty() => a,
        Ok(_) => kind
            .default_activations()
            .iter()
            .cycle()
            .take(per_dir * dirs)
            .map(|s| s.to_string())
            .collect(),
        Err(e) => return Err(e.to_string()),
    };
    if names.len() != per_dir * dirs {
        return Err(format!(
            "{} activations listed, expected {}",
            names.len(),
            per_dir * dirs
        ));
    }
    let floats = |a: &str| {
        node.attr::<Vec<f32>>(a)
            .map(|v| v.unwrap_or_default())
            .map_err(|e| e.to_string())
    };
    Activation::parse(
        &names,
        &floats("activation_alpha")?,
        &floats("activation_beta")?,
    )
}

/// Why the standard-op Scan form cannot express this node, if it cannot: it implements every
/// ONNX activation, clip, peepholes, `input_forget` and `sequence_lens`, so only malformed
/// activation lists remain. The policy reports the same reasons.
pub fn scan_form_limit(node: &Node, kind: RnnKind) -> Option<String> {
    if let Err(e) = activations(node, kind) {
        return Some(format!("activations: {e}"));
    }
    None
}

/// Attributes and shapes shared by LSTM, GRU and RNN.
pub struct RecurrentAttrs<'a> {
    pub kind: RnnKind,
    pub hidden: usize,
    pub input: usize,
    pub dirs: usize,
    /// 0: forward, 1: reverse, 2: bidirectional.
    pub direction: String,
    pub layout: i64,
    pub fp16: bool,
    /// `W` `[D, G*H, in]` and `R` `[D, G*H, H]`, read in place where they are float32.
    pub w: WeightSrc<'a>,
    pub r: WeightSrc<'a>,
    /// `B` `[D, 2*G*H]` (zeros when absent), as f32.
    pub b: ArrayD<f32>,
}

impl<'a> RecurrentAttrs<'a> {
    pub fn read(node: &Node, ctx: &NodeCtx<'a>, kind: RnnKind) -> Result<Self, Skip> {
        let err = |e: crate::Error| Skip(e.to_string());
        let w = const_weight(ctx, node, 1)?;
        let r = const_weight(ctx, node, 2)?;
        let g = kind.gates();
        if w.shape().len() != 3 || r.shape().len() != 3 {
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

    /// The `clip` threshold, if any.
    pub fn clip(&self, node: &Node) -> Result<Option<f32>, Skip> {
        match node.attr::<f32>("clip").map_err(|e| Skip(e.to_string()))? {
            Some(c) if c.is_nan() || c <= 0.0 => Err(Skip(format!("clip {c} is not positive"))),
            c => Ok(c),
        }
    }

    /// Whether direction `d` runs backwards in time.
    pub fn reverse(&self, d: usize) -> bool {
        self.direction == "reverse" || d == 1
    }

    /// `W` `[D, G*H, in]`, borrowed.
    pub fn w3(&self) -> WeightSrc<'_> {
        self.w.reshaped(self.w.shape()).expect("same shape")
    }

    /// `R` `[D, G*H, H]`, borrowed.
    pub fn r3(&self) -> WeightSrc<'_> {
        self.r.reshaped(self.r.shape()).expect("same shape")
    }

    /// `Wb` (`which = 0`) or `Rb` (`which = 1`) of direction `d`, `[G*H]`.
    pub fn bias(&self, d: usize, which: usize) -> Vec<f32> {
        let n = self.kind.gates() * self.hidden;
        (0..n).map(|i| self.b[[d, which * n + i]]).collect()
    }
}

pub fn type_name(o: &WeightQuantOptions) -> &'static str {
    match o.weight_type {
        WeightType::Int8 => "int8",
        WeightType::Uint8 => "uint8",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ndarray::Array3;

    use super::*;
    use crate::ir::attrs::{attr_float, attr_string};
    use crate::ir::{Graph, NameGen};
    use crate::onnx::AttributeProto;
    use crate::passes::quantize::lstm::rewrite_lstm;
    use crate::passes::quantize::policy::{LstmMode, PolicyOptions, decide};
    use crate::passes::quantize::recurrent_build::float_info;
    use crate::passes::quantize::rewrite::RewriteResult;

    fn ramp(d: usize, rows: usize, cols: usize) -> Array3<f32> {
        Array3::from_shape_fn((d, rows, cols), |(k, i, j)| {
            // Direction 1 is ten times larger, so per-direction scales must differ.
            let base = ((i * cols + j) as f32 * 0.37).sin() * (1.0 + i as f32 * 0.1);
            if k == 1 { base * 10.0 } else { base }
        })
    }

    #[test]
    fn tiled_transpose_matches_the_permuted_copy() {
        for (d, rows, cols) in [(2, 70, 130), (1, 1, 5), (1, 64, 64), (2, 129, 3), (1, 0, 4)] {
            let a = Array3::from_shape_fn((d, rows, cols), |(k, i, j)| {
                ((k * 31 + i * 7 + j * 13) % 251) as i8
            });
            let want = a
                .view()
                .permuted_axes([0, 2, 1])
                .as_standard_layout()
                .into_owned();
            let got = transpose_dirs(a.as_slice().unwrap(), d, rows, cols);
            assert_eq!(got, want.into_raw_vec_and_offset().0, "{d}x{rows}x{cols}");
        }
    }

    #[test]
    fn per_tensor_scales_are_per_direction() {
        let w = ramp(2, 8, 3);
        let q = QuantRecurrent::new(w.view().into_dyn(), false, &WeightQuantOptions::default());
        assert_eq!(q.q.scales.len(), 2);
        assert!((q.scales(1)[0] / q.scales(0)[0] - 10.0).abs() < 1e-3);
        assert_eq!(q.scale_tensor("s").dims(), &[2]);
        assert_eq!(q.all_values_t("w").dims(), &[2, 3, 8]);
        let deq = q.q.dequantize();
        let err = (&deq - &w.into_dyn()).mapv(f32::abs);
        assert!(err.iter().all(|&e| e <= q.scales(1)[0] / 2.0 + 1e-6));
    }

    #[test]
    fn per_channel_scales_are_per_gate_row_and_slices_transpose() {
        let w = ramp(2, 8, 3);
        let q = QuantRecurrent::new(w.view().into_dyn(), true, &WeightQuantOptions::default());
        assert_eq!(q.q.scales.len(), 16);
        assert_eq!(q.scale_tensor("s").dims(), &[2, 8]);
        // Row 5 of direction 1 has its own absmax.
        let absmax = (0..3).map(|j| w[[1, 5, j]].abs()).fold(0f32, f32::max);
        assert!((q.scales(1)[5] - absmax / 127.0).abs() < 1e-6);
        // Direction 1, rows 2..5, transposed to [cols, rows].
        let t = q.dir_values_t("v", 1, 2..5);
        assert_eq!(t.dims(), &[3, 3]);
        let v = t.to_array::<i8>().unwrap();
        let QValues::I8(all) = &q.q.values else {
            panic!("int8 expected")
        };
        for r in 0..3 {
            for c in 0..3 {
                assert_eq!(v[[c, r]], all[[1, 2 + r, c]]);
            }
        }
    }

    #[test]
    fn builder_follows_the_opset() {
        let mut names = NameGen::default();
        let mut b = Builder::new(&mut names, 11, "n");
        b.unsqueeze("x", &[0]);
        b.split("x", 1, &[2, 2]);
        assert_eq!(b.nodes[0].inputs().len(), 1);
        assert!(b.nodes[1].attribute("split").is_some());
        assert!(b.inits.is_empty());
        let mut b = Builder::new(&mut names, 13, "n");
        b.unsqueeze("x", &[0]);
        b.split("x", 1, &[2, 2]);
        assert_eq!(b.nodes[0].inputs().len(), 2);
        assert_eq!(b.nodes[1].inputs().len(), 2);
        assert_eq!(b.inits.len(), 2);
        // Names never repeat.
        let mut all: Vec<&String> = b.nodes.iter().flat_map(|n| n.outputs()).collect();
        all.extend(b.nodes.iter().map(|n| n.proto.name.as_ref().unwrap()));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    fn lstm_graph(extra: Vec<AttributeProto>, w: Array3<f32>, r: Array3<f32>) -> Graph {
        let mut g = Graph::default();
        g.proto.input.push(float_info("X", 4));
        g.add_initializer(Tensor::from_array("W", &w.view().into_dyn()));
        g.add_initializer(Tensor::from_array("R", &r.view().into_dyn()));
        let mut n = Node::new(
            "lstm",
            "LSTM",
            "",
            vec!["X".into(), "W".into(), "R".into()],
            vec!["Y".into()],
        );
        n.proto.attribute = extra;
        g.nodes.push(n);
        g
    }

    fn run_lstm(
        g: &Graph,
        mode: LstmMode,
        per_channel: bool,
        opts: WeightQuantOptions,
    ) -> RewriteResult {
        let types = crate::ir::shape::infer_types(g, &HashMap::new());
        let mut names = NameGen::new(g);
        let constants = |n: &str| g.initializers.get(n);
        let mut ctx = NodeCtx {
            constants: &constants,
            types: &types,
            names: &mut names,
            weights: opts,
            per_channel,
            lstm_mode: mode,
            opset: 17,
            defer_values: false,
            activations: super::super::rewrite::ActivationQuant::PerTensor,
        };
        rewrite_lstm(&g.nodes[0], &mut ctx)
    }

    #[test]
    fn ort_per_channel_zero_points_fit_the_kernel() {
        let w = ramp(1, 8, 4);
        let mut r = ramp(1, 8, 2);
        let uint8_asym = WeightQuantOptions {
            weight_type: WeightType::Uint8,
            symmetric: false,
            reduce_range: false,
        };
        let g = lstm_graph(vec![], w.clone(), r.clone());
        let rep = run_lstm(&g, LstmMode::Ort, true, uint8_asym).unwrap();
        let zp = rep
            .initializers
            .iter()
            .find(|t| t.name().ends_with("W_zero_point"))
            .unwrap();
        assert_eq!(zp.dims(), &[1, 8]);
        assert!(zp.to_array::<u8>().unwrap().iter().all(|&z| z == 128));
        assert!(!rep.note.contains("per-direction"), "{}", rep.note);
        // hidden_size is optional in ONNX but required by the kernel.
        let lstm = rep
            .nodes
            .iter()
            .find(|n| n.op_type() == "DynamicQuantizeLSTM");
        assert_eq!(lstm.unwrap().attr::<i64>("hidden_size").unwrap(), Some(2));
        // An all-zero row would get zero point 0 among 128s: the kernel rejects that, so the
        // rewrite falls back to per-direction scales.
        r.index_axis_mut(Axis(1), 3).fill(0.0);
        let g = lstm_graph(vec![], w, r);
        let rep = run_lstm(&g, LstmMode::Ort, true, uint8_asym).unwrap();
        assert!(rep.note.contains("per-direction"), "{}", rep.note);
        let zp = rep
            .initializers
            .iter()
            .find(|t| t.name().ends_with("R_zero_point"))
            .unwrap();
        assert_eq!(zp.dims(), &[1]);
        assert_eq!(rep.opsets, vec![("com.microsoft".to_string(), 1)]);
    }

    #[test]
    fn scan_form_reasons_match_the_policy() {
        let onnx = PolicyOptions {
            lstm_mode: LstmMode::Onnx,
            min_weight_elements: 0,
            ..Default::default()
        };
        let acts = |names: &[&str]| {
            lstm_graph(
                vec![
                    crate::ir::attrs::attr_strings("activations", names),
                    attr_string("direction", "forward"),
                ],
                ramp(1, 128, 64),
                ramp(1, 128, 32),
            )
        };
        let bad = acts(&["Swish", "Tanh", "Tanh"]);
        let err = run_lstm(&bad, LstmMode::Onnx, false, WeightQuantOptions::default()).unwrap_err();
        assert!(err.0.contains("unknown activation 'Swish'"), "{err:?}");
        let d = decide(&bad, &onnx);
        assert!(!d[0].quantize && d[0].reason.contains("'Swish'"), "{d:?}");
        let short = acts(&["Sigmoid", "Tanh"]);
        assert!(scan_form_limit(&short.nodes[0], RnnKind::Lstm).is_some());
        assert!(scan_form_limit(&short.nodes[0], RnnKind::Gru).is_none());
        // Known activations and clip are expressed.
        let good = acts(&["HardSigmoid", "Tanh", "Softsign"]);
        assert!(decide(&good, &onnx)[0].quantize);
        let mut clip = good.clone();
        clip.nodes[0].proto.attribute.push(attr_float("clip", 1.0));
        let rep = run_lstm(&clip, LstmMode::Onnx, false, WeightQuantOptions::default()).unwrap();
        let body = &rep
            .nodes
            .iter()
            .find(|n| n.op_type() == "Scan")
            .unwrap()
            .subgraphs[0];
        let count = |op: &str| {
            body.graph
                .nodes
                .iter()
                .filter(|n| n.op_type() == op)
                .count()
        };
        assert_eq!(
            (count("Clip"), count("HardSigmoid"), count("Softsign")),
            (4, 3, 1)
        );
    }

    #[test]
    fn activation_parameters_are_consumed_in_order() {
        let names: Vec<String> = ["LeakyRelu", "Tanh", "HardSigmoid", "ScaledTanh", "Elu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = Activation::parse(&names, &[0.1, 0.3, 0.7], &[0.4]).unwrap();
        let got: Vec<(&str, f32, f32)> = a
            .iter()
            .map(|a| (a.name.as_str(), a.alpha, a.beta))
            .collect();
        assert_eq!(
            got,
            vec![
                ("leakyrelu", 0.1, 0.0),
                ("tanh", 0.0, 0.0),
                ("hardsigmoid", 0.3, 0.4),
                ("scaledtanh", 0.7, 0.0),
                ("elu", 1.0, 0.0),
            ]
        );
        assert!(Activation::parse(&["Gelu".to_string()], &[], &[]).is_err());
    }
}
