//! Plan-time fusion of the int8 Linear unit (planning only; the graph is not changed).
//!
//! `onnx-dynq rewrite` (and onnxruntime's `quantize_dynamic`) turn a float MatMul/Gemm with
//! constant weights into
//!
//! ```text
//! DynamicQuantizeLinear(X) -> (Xq, Xs, Xz)
//! MatMulInteger(Xq, Wq, Xz[, Wz]) -> Cast(to float) -> Mul(·, Mul(Xs, Ws)) [-> Add(·, bias)]
//!   [-> Relu | Clip(const min/max) | LeakyRelu]
//! ```
//!
//! (Mul and Add operands in either order). Run node by node that is five or more steps with
//! an int32 and two float `[M, N]` intermediates; here it becomes one
//! [`Int8Linear`](crate::runtime::ops::int8_linear::Int8Linear) step: quantize X, one int8
//! GEMM with the scale/bias/activation epilogue.
//!
//! Conditions (anything else is left unfused): `Wq` is a constant 2-D int8/uint8 tensor, `Wz`
//! absent or constant, `Ws` a constant float scalar or `[N]`, the bias a constant float `[N]`
//! (or one value), Clip's bounds constant float scalars (or attributes before opset 11); every
//! intermediate value has exactly one reader and is not a graph output. The
//! DynamicQuantizeLinear is absorbed only when its three outputs are read by this chain alone;
//! otherwise it stays a step and the fused step reads `Xq, Xs, Xz` (quantization shared with
//! other consumers).
//!
//! The per-token form of `rewrite --activations per-token`,
//!
//! ```text
//! Cast<uint8>(Clip(Round(A2 / Unsqueeze(s, [1])) + Unsqueeze(z_f, [1]), 0, 255))
//!   -> MatMulInteger(·, Wq, -, Wz) -> Cast(to float)
//!   -> Sub(·, Mul(Unsqueeze(z_f, [1]), c)) -> Mul(·, Mul(Unsqueeze(s, [1]), Ws)) [-> Add(bias)]
//!   [-> activation]
//! ```
//!
//! (`c` and `Ws` constants; each Unsqueeze read once), becomes one per-row `Int8Linear` step
//! reading `A2, s, z_f`. The small `[M]` steps computing `s` and `z_f`
//! stay: they are the graph's own definition of the row parameters, so the fused step does
//! not have to recognise how they were computed.
//!
//! com.microsoft `DynamicQuantizeMatMul` and `MatMulIntegerToFloat` with constant weights
//! (and a scalar or absent A zero point) become the same step, taking a following activation
//! along under the same single-reader conditions.
//!
//! The fused step is placed where the chain's last node was, so every reader of its output
//! still comes after it and its inputs are computed before.

use std::collections::{HashMap, HashSet};

use crate::ir::{Graph, Node};
use crate::runtime::Value;
use crate::runtime::kernels::gemm_i8::{Activation, PackedB};
use crate::runtime::ops::BuildCtx;
use crate::runtime::ops::int8_linear::{AForm, Int8Linear};
use crate::runtime::ops::quant::pack_const_b;

use super::step_links::{Links, drop_steps, place_fused, single_output};
use super::{Options, Step};

/// The graph and planner state the matcher reads.
struct Ctx<'a> {
    consts: &'a [Option<Value>],
    graph_outs: &'a HashSet<usize>,
    graph: &'a Graph,
    /// Value name -> slot, as planned.
    slots: &'a HashMap<String, usize>,
    opsets: &'a HashMap<String, i64>,
}

/// One matched chain.
struct Chain {
    /// Steps replaced (the fused step goes at the last one).
    steps: Vec<usize>,
    inputs: Vec<Option<usize>>,
    output: usize,
    op: Int8Linear,
    names: Vec<String>,
}

struct Index<'a> {
    links: Links,
    /// Slot of a node's first named output -> the node (for attributes).
    nodes: HashMap<usize, &'a Node>,
}

/// Fuses every matching chain in `steps` (nothing with `options.no_kernel_fusion`).
pub(super) fn fuse_int8_linear(
    steps: &mut Vec<Step>,
    consts: &[Option<Value>],
    graph_outs: &HashSet<usize>,
    graph: &Graph,
    slots: &HashMap<String, usize>,
    opsets: &HashMap<String, i64>,
    options: &Options,
) {
    if options.no_kernel_fusion {
        return;
    }
    let cx = &Ctx {
        consts,
        graph_outs,
        graph,
        slots,
        opsets,
    };
    let mut idx = Index {
        links: Links::new(steps),
        nodes: HashMap::new(),
    };
    for node in &cx.graph.nodes {
        if let Some(o) = node.outputs().iter().find(|o| !o.is_empty())
            && let Some(&s) = cx.slots.get(o)
        {
            idx.nodes.insert(s, node);
        }
    }
    let mut chains = Vec::new();
    let mut used = HashSet::new();
    for i in 0..steps.len() {
        let st = &steps[i];
        let found = match (st.onnx_domain, st.op_type.as_str()) {
            (true, "MatMulInteger") => match_matmul_integer(steps, i, cx, &idx)
                .or_else(|| match_per_row(steps, i, cx, &idx)),
            (false, "DynamicQuantizeMatMul" | "MatMulIntegerToFloat") => {
                match_ms(steps, i, cx, &idx)
            }
            _ => None,
        };
        if let Some(c) = found
            && c.steps.iter().all(|s| !used.contains(s))
        {
            used.extend(c.steps.iter().copied());
            chains.push(c);
        }
    }
    if chains.is_empty() {
        return;
    }
    let mut drop = HashSet::new();
    for c in chains {
        // The last node's step becomes the fused one (its name and any other bookkeeping
        // fields are kept).
        place_fused(
            steps,
            &c.steps,
            Box::new(c.op),
            c.names.join("+"),
            c.inputs,
            vec![Some(c.output)],
            &mut drop,
        );
    }
    drop_steps(steps, &drop);
}

impl Index<'_> {
    /// The single reader of an intermediate slot that is not a graph output.
    fn only_reader(&self, slot: usize, cx: &Ctx) -> Option<usize> {
        self.links.only_reader(slot, cx.graph_outs)
    }
}

fn const_of<'v>(cx: &Ctx<'v>, slot: Option<usize>) -> Option<&'v Value> {
    cx.consts.get(slot?)?.as_ref()
}

/// A constant float that is a scalar or one value per column (rank <= 1).
fn per_column(v: &Value, n: usize) -> Option<Vec<f32>> {
    let Value::F32(a) = v else { return None };
    if a.ndim() > 1 || (a.len() != 1 && a.len() != n) {
        return None;
    }
    Some(a.iter().copied().collect())
}

/// B packed from constant slots (`zp` None = no zero-point input).
fn pack(cx: &Ctx, b: Option<usize>, zp: Option<usize>) -> Option<PackedB> {
    let mut const_inputs = vec![None, Some(const_of(cx, b)?), None];
    if zp.is_some() {
        const_inputs.push(Some(const_of(cx, zp)?));
    }
    let ctx = BuildCtx {
        opset: 10,
        const_inputs,
    };
    pack_const_b(&ctx, 1, 3).ok().flatten().map(|(p, _)| p)
}

/// The other input of a two-input step, when one of them is `x`.
fn other_input(st: &Step, x: usize) -> Option<usize> {
    match st.inputs[..] {
        [Some(a), Some(b)] if a == x && b != x => Some(b),
        [Some(a), Some(b)] if b == x && a != x => Some(a),
        _ => None,
    }
}

fn match_matmul_integer(steps: &[Step], i: usize, cx: &Ctx, idx: &Index) -> Option<Chain> {
    let mm = &steps[i];
    let (xq, wq, xz) = match mm.inputs[..] {
        [Some(a), Some(b), Some(z)] | [Some(a), Some(b), Some(z), _] => (a, b, z),
        _ => return None,
    };
    let wz = mm.inputs.get(3).copied().flatten();
    // A from a DynamicQuantizeLinear whose zero point is the one MatMulInteger uses.
    let &qi = idx.links.producer.get(&xq)?;
    let q = &steps[qi];
    if !(q.onnx_domain && q.op_type == "DynamicQuantizeLinear") {
        return None;
    }
    let (x, xs) = match (&q.inputs[..], &q.outputs[..]) {
        ([Some(x)], [Some(o0), Some(s), Some(z)]) if *o0 == xq && *z == xz => (*x, *s),
        _ => return None,
    };
    let packed = pack(cx, Some(wq), wz)?;
    let n = packed.n();
    // Cast to float.
    let int_out = single_output(mm)?;
    let ci = idx.only_reader(int_out, cx)?;
    let cast = &steps[ci];
    if !(cast.onnx_domain && cast.op_type == "Cast" && cast.inputs[..] == [Some(int_out)]) {
        return None;
    }
    let to = idx
        .nodes
        .get(&single_output(cast)?)?
        .attr::<i64>("to")
        .ok()??;
    if to != crate::onnx::tensor_proto::DataType::Float as i64 {
        return None;
    }
    // Mul(cast, scale) with scale = Mul(Xs, Ws).
    let cf = single_output(cast)?;
    let fi = idx.only_reader(cf, cx)?;
    let fmul = &steps[fi];
    if !(fmul.onnx_domain && fmul.op_type == "Mul") {
        return None;
    }
    let sc = other_input(fmul, cf)?;
    let &si = idx.links.producer.get(&sc)?;
    let smul = &steps[si];
    if !(smul.onnx_domain && smul.op_type == "Mul") || idx.only_reader(sc, cx)? != fi {
        return None;
    }
    let ws = other_input(smul, xs)?;
    let b_scales = per_column(const_of(cx, Some(ws))?, n)?;
    let mut chain = vec![i, ci, si, fi];
    let mut names = vec![
        "MatMulInteger".to_string(),
        "Cast".into(),
        "Mul".into(),
        "Mul".into(),
    ];
    let mut out = single_output(fmul)?;
    let bias = take_bias(steps, cx, idx, n, &mut out, &mut chain, &mut names);
    // Absorb the DynamicQuantizeLinear when this chain is its only reader.
    let absorb = idx.only_reader(xq, cx) == Some(i)
        && idx.only_reader(xz, cx) == Some(i)
        && idx.only_reader(xs, cx) == Some(si);
    let (form, inputs) = if absorb {
        chain.push(qi);
        names.insert(0, "DynamicQuantizeLinear".into());
        (AForm::Float, vec![Some(x)])
    } else {
        (AForm::Quantized, vec![Some(xq), Some(xs), Some(xz)])
    };
    finish(
        steps,
        cx,
        idx,
        Partial {
            steps: chain,
            names,
            inputs,
            output: out,
            form,
            packed,
            b_scales,
            bias,
            col_sums: None,
        },
    )
}

/// A following `Add` of a constant bias (one value or one per column) read by nothing else:
/// moves `out` past it and records its step.
fn take_bias(
    steps: &[Step],
    cx: &Ctx,
    idx: &Index,
    n: usize,
    out: &mut usize,
    chain: &mut Vec<usize>,
    names: &mut Vec<String>,
) -> Option<Vec<f32>> {
    let ai = idx.only_reader(*out, cx)?;
    let add = &steps[ai];
    if !(add.onnx_domain && add.op_type == "Add") {
        return None;
    }
    let v = per_column(const_of(cx, Some(other_input(add, *out)?))?, n)?;
    *out = single_output(add)?;
    chain.push(ai);
    names.push("Add".into());
    Some(if v.len() == n { v } else { vec![v[0]; n] })
}

/// The step producing `slot` if it is the default-domain `op` and `reader` is the slot's only
/// reader.
fn producer_for<'s>(
    steps: &'s [Step],
    slot: usize,
    op: &str,
    reader: usize,
    cx: &Ctx,
    idx: &Index,
) -> Option<(usize, &'s Step)> {
    let &p = idx.links.producer.get(&slot)?;
    let st = &steps[p];
    (st.onnx_domain && st.op_type == op && idx.only_reader(slot, cx) == Some(reader))
        .then_some((p, st))
}

/// `Unsqueeze(x, [1])` (axes as attribute before opset 13, as a constant input from 13)
/// producing `slot` for `reader` alone: its step and `x`.
fn unsqueeze_col(
    steps: &[Step],
    slot: usize,
    reader: usize,
    cx: &Ctx,
    idx: &Index,
) -> Option<(usize, usize)> {
    let (ui, st) = producer_for(steps, slot, "Unsqueeze", reader, cx, idx)?;
    let axes: Vec<i64> = match st.inputs[..] {
        [Some(_)] => idx.nodes.get(&slot)?.attr::<Vec<i64>>("axes").ok()??,
        [Some(_), Some(ax)] => match const_of(cx, Some(ax))? {
            Value::I64(a) => a.iter().copied().collect(),
            _ => return None,
        },
        _ => return None,
    };
    // [M] -> [M, 1]: axis 1 or -1 (the input must be 1-D, which the fused step checks).
    matches!(axes[..], [1] | [-1]).then_some((ui, st.inputs[0]?))
}

/// The per-token chain (module doc), from its MatMulInteger at step `i`.
fn match_per_row(steps: &[Step], i: usize, cx: &Ctx, idx: &Index) -> Option<Chain> {
    let mm = &steps[i];
    let (aq, wq, wz) = match mm.inputs[..] {
        [Some(a), Some(b)] => (a, b, None),
        [Some(a), Some(b), None] => (a, b, None),
        [Some(a), Some(b), None, z] => (a, b, z),
        _ => return None,
    };
    // A_q = Cast<uint8>(Clip(Add(Round(Div(A2, Unsqueeze(s))), Unsqueeze(z_f)), 0, 255)).
    let (qc_i, qcast) = producer_for(steps, aq, "Cast", i, cx, idx)?;
    if idx.nodes.get(&aq)?.attr::<i64>("to").ok()??
        != crate::onnx::tensor_proto::DataType::Uint8 as i64
    {
        return None;
    }
    let (clip_i, clip) = producer_for(steps, qcast.inputs[0]?, "Clip", qc_i, cx, idx)?;
    let [Some(shifted), Some(lo), Some(hi)] = clip.inputs[..] else {
        return None;
    };
    let bound = |slot| match const_of(cx, Some(slot)) {
        Some(Value::F32(a)) if a.len() == 1 => a.iter().next().copied(),
        _ => None,
    };
    if bound(lo)? != 0.0 || bound(hi)? != 255.0 {
        return None;
    }
    let (add_i, add) = producer_for(steps, shifted, "Add", clip_i, cx, idx)?;
    let (round_i, zq_col) = add.inputs.iter().flatten().find_map(|&x| {
        let (ri, _) = producer_for(steps, x, "Round", add_i, cx, idx)?;
        Some((ri, other_input(add, x)?))
    })?;
    let (zq_i, zq_f) = unsqueeze_col(steps, zq_col, add_i, cx, idx)?;
    let (div_i, div) = producer_for(steps, steps[round_i].inputs[0]?, "Div", round_i, cx, idx)?;
    let [Some(rows), Some(sq_col)] = div.inputs[..] else {
        return None;
    };
    let (sq_i, s) = unsqueeze_col(steps, sq_col, div_i, cx, idx)?;
    let packed = pack(cx, Some(wq), wz)?;
    let n = packed.n();
    let acc = single_output(mm)?;
    let ci = idx.only_reader(acc, cx)?;
    let cast = &steps[ci];
    let cast_out = single_output(cast)?;
    if !(cast.onnx_domain && cast.op_type == "Cast" && cast.inputs[..] == [Some(acc)])
        || idx.nodes.get(&cast_out)?.attr::<i64>("to").ok()??
            != crate::onnx::tensor_proto::DataType::Float as i64
    {
        return None;
    }
    // Sub(acc_float, Mul(Unsqueeze(z_f), c)): the operand order matters here.
    let sub_i = idx.only_reader(cast_out, cx)?;
    let sub = &steps[sub_i];
    let [Some(first), Some(corr)] = sub.inputs[..] else {
        return None;
    };
    if !(sub.onnx_domain && sub.op_type == "Sub" && first == cast_out) {
        return None;
    }
    let (corr_i, corr_mul) = producer_for(steps, corr, "Mul", sub_i, cx, idx)?;
    let (zp_col, col_sums) = corr_mul.inputs.iter().flatten().find_map(|&x| {
        let other = other_input(corr_mul, x)?;
        let c = per_column(const_of(cx, Some(other))?, n)?;
        (c.len() == n).then_some((x, c))
    })?;
    let (zu_i, zp_f) = unsqueeze_col(steps, zp_col, corr_i, cx, idx)?;
    if zp_f != zq_f {
        return None;
    }
    // Mul(centered, Mul(Unsqueeze(s), Ws)).
    let centered = single_output(sub)?;
    let fi = idx.only_reader(centered, cx)?;
    let fmul = &steps[fi];
    if !(fmul.onnx_domain && fmul.op_type == "Mul") {
        return None;
    }
    let (si, smul) = producer_for(steps, other_input(fmul, centered)?, "Mul", fi, cx, idx)?;
    let (scale_col, b_scales) = smul.inputs.iter().flatten().find_map(|&x| {
        let other = other_input(smul, x)?;
        Some((x, per_column(const_of(cx, Some(other))?, n)?))
    })?;
    let (su_i, s_again) = unsqueeze_col(steps, scale_col, si, cx, idx)?;
    if s_again != s {
        return None;
    }
    let mut chain = vec![
        sq_i, div_i, round_i, zq_i, add_i, clip_i, qc_i, i, ci, zu_i, corr_i, sub_i, su_i, si, fi,
    ];
    let mut names: Vec<String> = [
        "Unsqueeze",
        "Div",
        "Round",
        "Unsqueeze",
        "Add",
        "Clip",
        "Cast",
        "MatMulInteger",
        "Cast",
        "Unsqueeze",
        "Mul",
        "Sub",
        "Unsqueeze",
        "Mul",
        "Mul",
    ]
    .map(String::from)
    .into();
    let mut out = single_output(fmul)?;
    let bias = take_bias(steps, cx, idx, n, &mut out, &mut chain, &mut names);
    finish(
        steps,
        cx,
        idx,
        Partial {
            steps: chain,
            names,
            inputs: vec![Some(rows), Some(s), Some(zp_f)],
            output: out,
            form: AForm::PerRow,
            packed,
            b_scales,
            bias,
            col_sums: Some(col_sums),
        },
    )
}

/// A matched chain before its optional trailing activation.
struct Partial {
    steps: Vec<usize>,
    names: Vec<String>,
    inputs: Vec<Option<usize>>,
    output: usize,
    form: AForm,
    packed: PackedB,
    b_scales: Vec<f32>,
    bias: Option<Vec<f32>>,
    /// The per-row form's constant column sums.
    col_sums: Option<Vec<f32>>,
}

/// Takes a following activation into the chain (see [`match_activation`]) and builds the
/// fused step.
fn finish(steps: &[Step], cx: &Ctx, idx: &Index, p: Partial) -> Option<Chain> {
    let Partial {
        steps: mut chain,
        mut names,
        inputs,
        mut output,
        form,
        packed,
        b_scales,
        bias,
        col_sums,
    } = p;
    let act = match match_activation(steps, output, cx, idx) {
        Some((ai, act, o)) => {
            chain.push(ai);
            names.push(steps[ai].op_type.clone());
            output = o;
            act
        }
        None => Activation::None,
    };
    let op = match col_sums {
        None => Int8Linear::new(form, packed, b_scales, bias, act),
        Some(c) => Int8Linear::per_row(packed, b_scales, bias, act, c),
    }
    .ok()?;
    Some(Chain {
        steps: chain,
        inputs,
        output,
        op,
        names,
    })
}

/// com.microsoft `DynamicQuantizeMatMul(A, B, b_scale, b_zp?, bias?)` or
/// `MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp?, b_zp?, bias?)` with constant weight
/// parts, plus a following activation.
fn match_ms(steps: &[Step], i: usize, cx: &Ctx, idx: &Index) -> Option<Chain> {
    let st = &steps[i];
    let at = |k: usize| st.inputs.get(k).copied().flatten();
    let dq = st.op_type == "DynamicQuantizeMatMul";
    let (b, bs, bz, bias, inputs, form) = if dq {
        (at(1), at(2), at(3), at(4), vec![at(0)], AForm::Float)
    } else {
        let az = at(4);
        // A per-row zero point is not this step's form; a non-constant one is checked per
        // run (it must then be a scalar, which DynamicQuantizeLinear's is).
        if let Some(v) = const_of(cx, az)
            && v.len() != 1
        {
            return None;
        }
        if let Some(z) = az
            && cx.consts[z].is_none()
        {
            let &p = idx.links.producer.get(&z)?;
            if !(steps[p].onnx_domain && steps[p].op_type == "DynamicQuantizeLinear") {
                return None;
            }
        }
        (
            at(1),
            at(3),
            at(5),
            at(6),
            vec![at(0), at(2), az],
            AForm::Quantized,
        )
    };
    at(0)?;
    let packed = pack(cx, b, bz)?;
    let n = packed.n();
    let b_scales = per_column(const_of(cx, bs)?, n)?;
    let bias = match bias {
        None => None,
        Some(_) => {
            let v = per_column(const_of(cx, bias)?, n)?;
            if v.len() != n {
                return None;
            }
            Some(v)
        }
    };
    finish(
        steps,
        cx,
        idx,
        Partial {
            steps: vec![i],
            names: vec![st.op_type.clone()],
            inputs,
            output: single_output(st)?,
            form,
            packed,
            b_scales,
            bias,
            col_sums: None,
        },
    )
}

/// The single reader of `x` if it is a Relu, LeakyRelu or Clip with constant bounds: its
/// step index, the activation and its output.
fn match_activation(
    steps: &[Step],
    x: usize,
    cx: &Ctx,
    idx: &Index,
) -> Option<(usize, Activation, usize)> {
    let ai = idx.only_reader(x, cx)?;
    let st = &steps[ai];
    if !st.onnx_domain || st.inputs.first() != Some(&Some(x)) {
        return None;
    }
    let out = single_output(st)?;
    let node = idx.nodes.get(&out)?;
    let act = match st.op_type.as_str() {
        "Relu" if st.inputs.len() == 1 => Activation::Relu,
        "LeakyRelu" if st.inputs.len() == 1 => Activation::LeakyRelu {
            alpha: node.attr_or::<f32>("alpha", 0.01).ok()?,
        },
        "Clip" => {
            let opset = cx.opsets.get("").copied().unwrap_or(1);
            let (min, max) = if opset < 11 {
                if st.inputs.len() != 1 {
                    return None;
                }
                (node.attr::<f32>("min").ok()?, node.attr::<f32>("max").ok()?)
            } else {
                let bound = |k: usize| -> Option<Option<f32>> {
                    match st.inputs.get(k).copied().flatten() {
                        None => Some(None),
                        Some(s) => match const_of(cx, Some(s))? {
                            Value::F32(a) if a.len() == 1 => Some(a.iter().next().copied()),
                            _ => None,
                        },
                    }
                };
                if st.inputs.len() > 3 {
                    return None;
                }
                (bound(1)?, bound(2)?)
            };
            Activation::Clip {
                min: min.unwrap_or(f32::NEG_INFINITY),
                max: max.unwrap_or(f32::INFINITY),
            }
        }
        _ => return None,
    };
    Some((ai, act, out))
}
