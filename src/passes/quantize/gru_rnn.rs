//! GRU and RNN rewriters: the standard-ops Scan form and weight-only. onnxruntime has no
//! int8 GRU/RNN op, so `--lstm ort` uses the Scan form for them.
//!
//! ONNX GRU (opset 7/14): gates in `zrh` order, `W` `[D, 3H, in]`, `R` `[D, 3H, H]`,
//! `B` `[D, 6H]` = `[Wb, Rb]`:
//!
//! ```text
//! z = σ(x·Wzᵀ + h·Rzᵀ + Wbz + Rbz)        r = σ(x·Wrᵀ + h·Rrᵀ + Wbr + Rbr)
//! linear_before_reset = 0:  n = tanh(x·Whᵀ + (r⊙h)·Rhᵀ + Rbh + Wbh)
//! linear_before_reset = 1:  n = tanh(x·Whᵀ + r⊙(h·Rhᵀ + Rbh) + Wbh)
//! H = (1 - z)⊙n + z⊙h
//! ```
//!
//! With `linear_before_reset = 0` the `Rh` product reads `r⊙h`, so the step quantizes twice
//! (`h` for `Rz`/`Rr`, `r⊙h` for `Rh`); `Rbh` is hoisted with the other biases. With 1 one
//! product `h·Rᵀ` serves all three gates and `Rbh` stays inside the step.
//!
//! ONNX RNN: `W` `[D, H, in]`, `R` `[D, H, H]`, `B` `[D, 2H]`; `H = tanh(x·Wᵀ + h·Rᵀ + Wb + Rb)`.
//!
//! The Scan form supports the activations, clip (bounding every activation's input) and
//! `sequence_lens`.

use crate::ir::Node;

use super::policy::LstmMode;
use super::recurrent_build::Builder;
use super::recurrent_common::{
    QuantRecurrent, RecurrentAttrs, RnnKind, activations, scan_form_limit, type_name,
};
use super::recurrent_scan::rewrite_scan_form;
use super::recurrent_weight_only::rewrite_weight_only;
use super::rewrite::{NodeCtx, RewriteResult, Skip};

pub fn rewrite_gru_rnn(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    let kind = match node.op_type() {
        "GRU" => RnnKind::Gru,
        "RNN" => RnnKind::Rnn,
        other => return Err(Skip(format!("{other} is not GRU or RNN"))),
    };
    let a = RecurrentAttrs::read(node, ctx, kind)?;
    match ctx.lstm_mode {
        // onnxruntime has no int8 GRU/RNN op: the portable form serves `ort` too.
        LstmMode::Ort | LstmMode::Onnx => rewrite_onnx(node, ctx, &a),
        LstmMode::WeightOnly => rewrite_weight_only(node, ctx, &a),
    }
}

fn rewrite_onnx(node: &Node, ctx: &mut NodeCtx, a: &RecurrentAttrs) -> RewriteResult {
    if let Some(why) = scan_form_limit(node, a.kind) {
        return Err(Skip(format!("{why}; use --lstm weight-only")));
    }
    let h = a.hidden;
    let rq = QuantRecurrent::new(a.r3(), ctx.per_channel, &ctx.weights);
    let clip = a.clip(node)?;
    let acts = activations(node, a.kind).map_err(Skip)?;
    let note = format!(
        "standard-op Scan form, {} {}{}",
        if ctx.per_channel {
            "per-channel"
        } else {
            "per-tensor"
        },
        type_name(&ctx.weights),
        if a.fp16 { ", fp16 cast to float32" } else { "" }
    );
    match a.kind {
        RnnKind::Rnn => {
            let bias = |d: usize| -> Vec<f32> {
                let (wb, rb) = (a.bias(d, 0), a.bias(d, 1));
                wb.iter().zip(&rb).map(|(x, y)| x + y).collect()
            };
            let mut body = |sb: &mut Builder,
                            d: usize,
                            states: &[String],
                            x_t: &str|
             -> Result<Vec<String>, Skip> {
                let rd = rq.dir_weight(sb, &format!("R{d}"), d);
                let hq = sb.dynamic_quantize(&states[0]);
                let rh = sb.int_matmul(&hq, &rd);
                let pre = sb.op1("Add", &[x_t, &rh], vec![]);
                Ok(vec![sb.activation(&acts[d], &pre, clip)])
            };
            rewrite_scan_form(node, ctx, a, &bias, &mut body, note)
        }
        _ => {
            let lbr = node
                .attr_or("linear_before_reset", 0i64)
                .map_err(|e| Skip(e.to_string()))?
                != 0;
            // Hoisted: Wb for all gates, Rbz and Rbr, and Rbh unless it sits inside r⊙(...).
            let bias = |d: usize| -> Vec<f32> {
                let (wb, rb) = (a.bias(d, 0), a.bias(d, 1));
                wb.iter()
                    .zip(&rb)
                    .enumerate()
                    .map(|(i, (x, y))| if lbr && i >= 2 * h { *x } else { x + y })
                    .collect()
            };
            let mut body = |sb: &mut Builder,
                            d: usize,
                            states: &[String],
                            x_t: &str|
             -> Result<Vec<String>, Skip> {
                let h_prev = &states[0];
                let xg = sb.split(x_t, 1, &[h as i64; 3]);
                let hq = sb.dynamic_quantize(h_prev);
                let (hz, hr, hh) = if lbr {
                    let rd = rq.dir_weight(sb, &format!("R{d}"), d);
                    let rh = sb.int_matmul(&hq, &rd);
                    let hg = sb.split(&rh, 1, &[h as i64; 3]);
                    (hg[0].clone(), hg[1].clone(), Some(hg[2].clone()))
                } else {
                    let rd = rq.dir_weight_rows(sb, &format!("R{d}_zr"), d, 0..2 * h);
                    let rh = sb.int_matmul(&hq, &rd);
                    let hg = sb.split(&rh, 1, &[h as i64; 2]);
                    (hg[0].clone(), hg[1].clone(), None)
                };
                let zs = sb.op1("Add", &[&xg[0], &hz], vec![]);
                let z = sb.activation(&acts[2 * d], &zs, clip);
                let rs = sb.op1("Add", &[&xg[1], &hr], vec![]);
                let r = sb.activation(&acts[2 * d], &rs, clip);
                let inner = match hh {
                    Some(mut hh) => {
                        let rbh: Vec<f32> = a.bias(d, 1)[2 * h..].to_vec();
                        if rbh.iter().any(|&v| v != 0.0) {
                            let rbh = sb.init_f32("Rbh", &[h], rbh);
                            hh = sb.op1("Add", &[&hh, &rbh], vec![]);
                        }
                        sb.op1("Mul", &[&r, &hh], vec![])
                    }
                    None => {
                        let rd = rq.dir_weight_rows(sb, &format!("R{d}_h"), d, 2 * h..3 * h);
                        let reset = sb.op1("Mul", &[&r, h_prev], vec![]);
                        let rq8 = sb.dynamic_quantize(&reset);
                        sb.int_matmul(&rq8, &rd)
                    }
                };
                let ns = sb.op1("Add", &[&xg[2], &inner], vec![]);
                let n = sb.activation(&acts[2 * d + 1], &ns, clip);
                // (1 - z)⊙n + z⊙h = n + z⊙(h - n)
                let diff = sb.op1("Sub", &[h_prev, &n], vec![]);
                let zd = sb.op1("Mul", &[&z, &diff], vec![]);
                Ok(vec![sb.op1("Add", &[&n, &zd], vec![])])
            };
            rewrite_scan_form(node, ctx, a, &bias, &mut body, note)
        }
    }
}
