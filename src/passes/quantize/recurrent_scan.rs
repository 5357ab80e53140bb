//! The standard-ops form of a quantized LSTM/GRU/RNN, runnable by any ONNX runtime (no
//! Loop, no contrib ops).
//!
//! The input projection of every time step is one quantized matmul hoisted out of the
//! recurrence (`DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`, plus the hoistable
//! biases). Each direction's recurrence is a `Scan` (opset >= 9 semantics: states h (and c),
//! one scan input, the projected `X` `[seq, batch, G*H]`, and one scan output, h per step)
//! whose body the op's rewriter builds: the quantized `R` product (h quantized every step)
//! and the gates. A reverse direction reads the time axis reversed by a Gather over
//! `seq-1 - Range(0, seq, 1)` and reverses its output back, because tract ignores Scan's
//! direction attributes. `sequence_lens` becomes a step mask, a second scan input: states
//! stop changing and `Y` is zero past each entry's length; reverse directions then reverse
//! each entry within its length (ReverseSequence). Absent initial states are zeros shaped at run time (the
//! batch may be symbolic).
//! `Y` `[seq, D, batch, H]`, `Y_h`/`Y_c` `[D, batch, H]` are assembled with Unsqueeze and
//! Concat; `layout = 1` and fp16 get Transposes and Casts at the boundaries.

use crate::ir::attrs::attr_int;
use crate::ir::graph::Subgraph;
use crate::ir::{Graph, Node};
use crate::onnx::attribute_proto::AttributeType;
use crate::onnx::tensor_proto::DataType;
use crate::onnx::{AttributeProto, GraphProto, ValueInfoProto};

use super::recurrent_build::{Builder, float_info};
use super::recurrent_common::{QuantRecurrent, RecurrentAttrs};
use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip};

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
    if ctx.opset < 11 {
        return Err(Skip(format!(
            "the Scan form needs opset 11 (DynamicQuantizeLinear); the model imports opset {}",
            ctx.opset
        )));
    }
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
    let mut rev_index: Option<String> = None;

    // sequence_lens: a step mask [seq, batch, 1] (1 while t < len) as a second scan input;
    // the body keeps the states where it is 0 and writes zeros to Y there, as ONNX asks.
    let lens = node.input(4).map(|l| b.cast(l, DataType::Int64));
    let mask = lens.as_ref().map(|lens| {
        let seq = b.op1("Shape", &[&x], vec![]);
        let seq = b.take(&seq, 0, 0);
        let zero = b.init_i64("zero", &[], vec![0]);
        let one = b.init_i64("one", &[], vec![1]);
        let steps = b.op1("Range", &[&zero, &seq, &one], vec![]);
        let steps = b.unsqueeze(&steps, &[1]);
        let lens = b.unsqueeze(lens, &[0]);
        let valid = b.op1("Less", &[&steps, &lens], vec![]);
        let valid = b.cast(&valid, DataType::Float);
        b.unsqueeze(&valid, &[2])
    });

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
        // A reverse direction reads the sequence back to front, reversed explicitly since
        // tract ignores Scan's direction attributes.
        let rev = a.reverse(d);
        if rev {
            xp = reverse_time(&mut b, &xp, &x, lens.as_deref(), &mut rev_index);
        }
        scan_inputs.push(xp);
        if let Some(m) = &mask {
            scan_inputs.push(m.clone());
        }

        // The body.
        let body_graph = {
            let mut sb = b.sub(&format!("{prefix}/scan{d}"));
            let state_in: Vec<String> = (0..a.kind.states())
                .map(|k| sb.fresh(&format!("state{k}_in")))
                .collect();
            let x_t = sb.fresh("x_t");
            let mut state_out = body(&mut sb, d, &state_in, &x_t)?;
            let m_t = mask.as_ref().map(|_| sb.fresh("mask_t"));
            let y_t = match &m_t {
                None => sb.op1("Identity", &[&state_out[0]], vec![]),
                Some(m) => {
                    // new = prev + m * (new - prev); y = m * new
                    for (new, prev) in state_out.iter_mut().zip(&state_in) {
                        let delta = sb.op1("Sub", &[new, prev], vec![]);
                        let kept = sb.op1("Mul", &[m, &delta], vec![]);
                        *new = sb.op1("Add", &[prev, &kept], vec![]);
                    }
                    sb.op1("Mul", &[m, &state_out[0]], vec![])
                }
            };
            let mut inputs: Vec<ValueInfoProto> =
                state_in.iter().map(|s| float_info(s, h)).collect();
            inputs.push(float_info(&x_t, g * h));
            if let Some(m) = &m_t {
                inputs.push(float_info(m, 1));
            }
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
        let attrs = vec![
            attr_int("num_scan_inputs", if mask.is_some() { 2 } else { 1 }),
            AttributeProto {
                name: Some("body".into()),
                r#type: Some(AttributeType::Graph as i32),
                ..Default::default()
            },
        ];
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
        let y = outs[a.kind.states()].clone();
        ys.push(if rev {
            reverse_time(&mut b, &y, &x, lens.as_deref(), &mut rev_index)
        } else {
            y
        });
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

/// `v` with its time axis (0) reversed: each batch entry within its own length when there
/// are sequence lengths (ReverseSequence), else whole (Gather over `seq-1 - Range(0, seq, 1)`
/// of `x`'s time axis, built once and kept in `index`).
fn reverse_time(
    b: &mut Builder,
    v: &str,
    x: &str,
    lens: Option<&str>,
    index: &mut Option<String>,
) -> String {
    if let Some(lens) = lens {
        let attrs = vec![attr_int("batch_axis", 1), attr_int("time_axis", 0)];
        return b.op1("ReverseSequence", &[v, lens], attrs);
    }
    let idx = match index {
        Some(i) => i.clone(),
        None => {
            let shape = b.op1("Shape", &[x], vec![]);
            let seq = b.take(&shape, 0, 0);
            let one = b.init_i64("one", &[], vec![1]);
            let start = b.op1("Sub", &[&seq, &one], vec![]);
            // `(seq - 1) - Range(0, seq, 1)`: tract-onnx 0.23 infers the length of a Range
            // with a negative delta wrongly (it divides by the delta cast to unsigned), so
            // `Range(seq-1, -1, -1)` would not load there.
            let zero = b.init_i64("zero", &[], vec![0]);
            let up = b.op1("Range", &[&zero, &seq, &one], vec![]);
            let i = b.op1("Sub", &[&start, &up], vec![]);
            *index = Some(i.clone());
            i
        }
    };
    b.op1("Gather", &[v, &idx], vec![attr_int("axis", 0)])
}
