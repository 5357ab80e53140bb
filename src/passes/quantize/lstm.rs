//! LSTM rewriter, in the three `--lstm` modes.
//!
//! ONNX LSTM (opset 7/14; `layout` since 14): gates in `iofc` order, `W` `[D, 4H, in]`,
//! `R` `[D, 4H, H]`, `B` `[D, 8H]` = `[Wb, Rb]`, peepholes `P` `[D, 3H]` (`iof`):
//!
//! ```text
//! i = σ(x·Wiᵀ + h·Riᵀ + Pi⊙c + Wbi + Rbi)     f = σ(x·Wfᵀ + h·Rfᵀ + Pf⊙c + Wbf + Rbf)
//! g = tanh(x·Wcᵀ + h·Rcᵀ + Wbc + Rbc)          C = f⊙c + i⊙g
//! o = σ(x·Woᵀ + h·Roᵀ + Po⊙C + Wbo + Rbo)     H = o⊙tanh(C)
//! ```
//!
//! - `ort`: com.microsoft `DynamicQuantizeLSTM` (domain version 1) as onnxruntime's CPU kernel
//!   consumes it: `W` `[D, in, 4H]` and `R` `[D, H, 4H]` (transposed), int8 or uint8, scales
//!   and zero points `[D]` (per direction) or `[D, 4H]` (per gate row). The kernel rejects
//!   per-row zero points unless they are all 0 (int8) or all equal (uint8), so per-channel
//!   quantization is symmetric here. The kernel shares the float LSTM's code for activations,
//!   clip, `input_forget`, `sequence_lens` and peepholes, so they pass through. It has no
//!   `layout`: batch-major tensors are transposed around it. It computes in float32 only: an
//!   fp16 LSTM gets Casts at its boundaries.
//! - `onnx`: standard ops only (see recurrent_scan.rs); activations, peepholes, clip,
//!   `input_forget` (f = 1 - i) and `sequence_lens` are supported.
//! - `weight-only`: int8 `W`/`R` dequantized in front of the float LSTM.

use ndarray::Array1;

use crate::ir::Node;
use crate::ir::attrs::attr_int;
use crate::onnx::tensor_proto::DataType;

use super::policy::LstmMode;
use super::recurrent_build::Builder;
use super::recurrent_common::{
    QuantRecurrent, RecurrentAttrs, RnnKind, activations, const_f32, scan_form_limit, type_name,
};
use super::recurrent_scan::rewrite_scan_form;
use super::recurrent_weight_only::rewrite_weight_only;
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};
use super::weights::{WeightQuantOptions, WeightType};

pub fn rewrite_lstm(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    let a = RecurrentAttrs::read(node, ctx, RnnKind::Lstm)?;
    match ctx.lstm_mode {
        LstmMode::Ort => rewrite_ort(node, ctx, &a),
        LstmMode::Onnx => rewrite_onnx(node, ctx, &a),
        LstmMode::WeightOnly => rewrite_weight_only(node, ctx, &a),
    }
}

fn mode_note(opts: &WeightQuantOptions, per_channel: bool) -> String {
    format!(
        "{} {}{}",
        if per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        type_name(opts),
        if opts.reduce_range {
            " reduce-range"
        } else {
            ""
        }
    )
}

fn rewrite_ort(node: &Node, ctx: &mut NodeCtx, a: &RecurrentAttrs) -> RewriteResult {
    // The kernel accepts per-row zero points only when they are all zero (int8) or all equal
    // (uint8): symmetric quantization gives exactly that.
    let mut opts = ctx.weights;
    let mut per_channel = ctx.per_channel;
    if per_channel {
        opts.symmetric = true;
    }
    let mut wq = QuantRecurrent::new(a.w3(), per_channel, &opts);
    let mut rq = QuantRecurrent::new(a.r3(), per_channel, &opts);
    let fits = |q: &QuantRecurrent| {
        !q.per_channel
            || match opts.weight_type {
                WeightType::Int8 => q.q.zero_points.iter().all(|&z| z == 0),
                WeightType::Uint8 => q.q.zero_points.iter().all(|&z| z == q.q.zero_points[0]),
            }
    };
    let mut fallback = "";
    if !fits(&wq) || !fits(&rq) {
        // uint8 rows that are all zero get zero point 0 instead of 128: per direction then.
        per_channel = false;
        opts = ctx.weights;
        wq = QuantRecurrent::new(a.w3(), false, &opts);
        rq = QuantRecurrent::new(a.r3(), false, &opts);
        fallback = " (per-direction: a row's zero point differs, which the kernel rejects)";
    }

    let note = format!(
        "DynamicQuantizeLSTM, {}{fallback}{}{}",
        mode_note(&opts, per_channel),
        if a.layout == 1 {
            ", layout 1 transposed"
        } else {
            ""
        },
        if a.fp16 { ", fp16 cast to float32" } else { "" }
    );
    let prefix = node.display_name().to_string();
    let mut b = Builder::new(ctx.names, ctx.opset, &prefix);
    let batch_major = a.layout == 1;
    let prep = |b: &mut Builder, idx: usize, transpose: bool| -> String {
        let Some(v) = node.input(idx) else {
            return String::new();
        };
        let mut v = v.to_string();
        if a.fp16 {
            v = b.cast(&v, DataType::Float);
        }
        if transpose && batch_major {
            v = b.transpose(&v, &[1, 0, 2]);
        }
        v
    };
    let x = prep(&mut b, 0, true);
    let bias = prep(&mut b, 3, false);
    let h0 = prep(&mut b, 5, true);
    let c0 = prep(&mut b, 6, true);
    let p = prep(&mut b, 7, false);
    let seq_lens = node.input(4).unwrap_or_default().to_string();
    let w = b.init_with("W_quantized", |n| wq.all_values_t(n));
    let r = b.init_with("R_quantized", |n| rq.all_values_t(n));
    let ws = b.init_with("W_scale", |n| wq.scale_tensor(n));
    let wz = b.init_with("W_zero_point", |n| wq.zero_point_tensor(n));
    let rs = b.init_with("R_scale", |n| rq.scale_tensor(n));
    let rz = b.init_with("R_zero_point", |n| rq.zero_point_tensor(n));
    let inputs = [
        x.as_str(),
        &w,
        &r,
        &bias,
        &seq_lens,
        &h0,
        &c0,
        &p,
        &ws,
        &wz,
        &rs,
        &rz,
    ];

    // Outputs: written directly under the original names unless they need a Transpose or a
    // Cast after the op.
    let post = batch_major || a.fp16;
    let outputs: Vec<String> = node
        .outputs()
        .iter()
        .map(|o| {
            if o.is_empty() || !post {
                o.clone()
            } else {
                b.fresh("lstm_out")
            }
        })
        .collect();
    let mut attrs: Vec<_> = node
        .proto
        .attribute
        .iter()
        .filter(|at| at.name() != "layout")
        .cloned()
        .collect();
    // Optional in ONNX, required by the kernel.
    if node.attribute("hidden_size").is_none() {
        attrs.push(attr_int("hidden_size", a.hidden as i64));
    }
    b.node_with_outputs(
        "com.microsoft",
        "DynamicQuantizeLSTM",
        &inputs,
        outputs.clone(),
        attrs,
    );
    if post {
        for (i, (o, target)) in outputs.iter().zip(node.outputs()).enumerate() {
            if o.is_empty() {
                continue;
            }
            let mut v = o.clone();
            if batch_major {
                let perm: &[i64] = if i == 0 { &[2, 0, 1, 3] } else { &[1, 0, 2] };
                v = b.transpose(&v, perm);
            }
            if a.fp16 {
                v = b.cast(&v, DataType::Float16);
            }
            b.rename(&v, target);
        }
    }
    Ok(Replacement {
        nodes: b.nodes,
        initializers: b.inits,
        opsets: vec![("com.microsoft".into(), 1)],
        note,
    })
}

fn rewrite_onnx(node: &Node, ctx: &mut NodeCtx, a: &RecurrentAttrs) -> RewriteResult {
    if let Some(why) = scan_form_limit(node, RnnKind::Lstm) {
        return Err(Skip(format!("{why}; use --lstm ort or weight-only")));
    }
    let h = a.hidden;
    let peep: Option<Vec<Array1<f32>>> = match node.input(7) {
        None => None,
        Some(_) => {
            let p = const_f32(ctx, node, 7)?;
            if p.shape() != [a.dirs, 3 * h] {
                return Err(Skip(format!("P has shape {:?}", p.shape())));
            }
            Some(
                (0..a.dirs)
                    .map(|d| {
                        p.index_axis(ndarray::Axis(0), d)
                            .to_owned()
                            .into_dimensionality()
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| Skip(format!("P: {e}")))?,
            )
        }
    };
    let rq = QuantRecurrent::new(a.r3(), ctx.per_channel, &ctx.weights);
    let clip = a.clip(node)?;
    let acts = activations(node, RnnKind::Lstm).map_err(Skip)?;
    let input_forget = node
        .attr_or("input_forget", 0i64)
        .map_err(|e| Skip(e.to_string()))?
        != 0;
    let bias = |d: usize| -> Vec<f32> {
        let (wb, rb) = (a.bias(d, 0), a.bias(d, 1));
        wb.iter().zip(&rb).map(|(x, y)| x + y).collect()
    };
    let mut body =
        |sb: &mut Builder, d: usize, states: &[String], x_t: &str| -> Result<Vec<String>, Skip> {
            let (h_prev, c_prev) = (&states[0], &states[1]);
            let rd = rq.dir_weight(sb, &format!("R{d}"), d);
            let hq = sb.dynamic_quantize(h_prev);
            let rh = sb.int_matmul(&hq, &rd);
            let gates = sb.op1("Add", &[x_t, &rh], vec![]);
            let g = sb.split(&gates, 1, &[h as i64; 4]);
            let (mut gi, mut go, mut gf, gc) =
                (g[0].clone(), g[1].clone(), g[2].clone(), g[3].clone());
            let peep_d = peep.as_ref().map(|p| {
                let p = &p[d];
                let part = |k: usize| p.slice(ndarray::s![k * h..(k + 1) * h]).to_vec();
                (part(0), part(1), part(2))
            });
            if let Some((pi, _, pf)) = &peep_d {
                let pi = sb.init_f32("Pi", &[h], pi.clone());
                let pf = sb.init_f32("Pf", &[h], pf.clone());
                let ci = sb.op1("Mul", &[c_prev, &pi], vec![]);
                gi = sb.op1("Add", &[&gi, &ci], vec![]);
                let cf = sb.op1("Mul", &[c_prev, &pf], vec![]);
                gf = sb.op1("Add", &[&gf, &cf], vec![]);
            }
            let (fa, ga, ha) = (&acts[3 * d], &acts[3 * d + 1], &acts[3 * d + 2]);
            let i = sb.activation(fa, &gi, clip);
            // input_forget couples the gates: f = 1 - i.
            let f = if input_forget {
                let one = sb.init_f32("one", &[], vec![1.0]);
                sb.op1("Sub", &[&one, &i], vec![])
            } else {
                sb.activation(fa, &gf, clip)
            };
            let cand = sb.activation(ga, &gc, clip);
            let keep = sb.op1("Mul", &[&f, c_prev], vec![]);
            let add = sb.op1("Mul", &[&i, &cand], vec![]);
            let c = sb.op1("Add", &[&keep, &add], vec![]);
            if let Some((_, po, _)) = &peep_d {
                let po = sb.init_f32("Po", &[h], po.clone());
                let co = sb.op1("Mul", &[&c, &po], vec![]);
                go = sb.op1("Add", &[&go, &co], vec![]);
            }
            let o = sb.activation(fa, &go, clip);
            // h is applied to the cell state without clip, as onnxruntime does.
            let tc = sb.activation(ha, &c, None);
            let hn = sb.op1("Mul", &[&o, &tc], vec![]);
            Ok(vec![hn, c])
        };
    let note = format!(
        "standard-op Scan form, {}{}",
        mode_note(&ctx.weights, ctx.per_channel),
        if a.fp16 { ", fp16 cast to float32" } else { "" }
    );
    rewrite_scan_form(node, ctx, a, &bias, &mut body, note)
}
