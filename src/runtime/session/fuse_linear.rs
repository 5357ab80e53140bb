//! Plan-time fusion of Linear layers (the graph is not changed): a step
//! `MatMul(A, W)` or `Gemm(A, W, C)` with a constant f32 weight, optionally followed by
//! `Add(·, bias)` with a constant row bias (`[]`, `[1]` or `[N]`; MatMul only, Gemm has its own
//! C), optionally followed by `Relu`, `LeakyRelu` or `Clip` with constant bounds, becomes one
//! step running the packed kernel with the bias and activation applied in its output loop
//! ([`Linear`]). The intermediate results are then never materialized.
//!
//! A node joins the chain only when it is the sole reader of the previous result and that
//! result is not a graph output (a value read twice, or returned, must exist). The fused step
//! keeps the original ops: for inputs the kernel does not take (a non-f32 A, a shape it does
//! not fit) it runs them one after the other, so it means exactly what the nodes meant,
//! errors included.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::ir::{Graph, Node};
use crate::runtime::kernels::gemm_f32::Act;
use crate::runtime::ops::linalg::{self, Linear};
use crate::runtime::ops::{BuildCtx, FnOp, Op};
use crate::runtime::value::Value;

use super::Step;
use super::step_links::{drop_steps, place_fused_first};

/// Where a stage of the original chain takes an input from.
pub(super) enum StageIn {
    /// The fused step's input at this position.
    Input(usize),
    /// The previous stage's result.
    Prev,
    Absent,
}

/// One original node of a fused chain, kept to run the chain node by node when the fused
/// kernel does not apply.
pub(super) struct Stage {
    pub op: Box<dyn Op>,
    pub inputs: Vec<StageIn>,
}

/// Runs the original chain: each stage reads the fused step's `inputs` and the previous
/// stage's result; returns the last result.
pub(super) fn run_stages(stages: &[Stage], inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let mut prev: Option<Value> = None;
    for st in stages {
        let args: Vec<Option<&Value>> = st
            .inputs
            .iter()
            .map(|i| match i {
                StageIn::Input(k) => inputs.get(*k).copied().flatten(),
                StageIn::Prev => prev.as_ref(),
                StageIn::Absent => None,
            })
            .collect();
        prev = st.op.run(&args)?.into_iter().next();
    }
    Ok(prev.into_iter().collect())
}

struct FusedLinear {
    linear: Linear,
    stages: Vec<Stage>,
}

impl Op for FusedLinear {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        if let Some(a) = inputs.first().copied().flatten()
            && let Some(out) = self.linear.run(a)
        {
            return Ok(vec![out]);
        }
        run_stages(&self.stages, inputs)
    }
}

/// The activation a node applies, when it is one the kernel fuses and its parameters are
/// constant.
fn activation(node: &Node, step: &Step, consts: &[Option<Value>], opset: i64) -> Option<Act> {
    match node.op_type() {
        "Relu" => Some(Act::Relu),
        "LeakyRelu" => Some(Act::LeakyRelu {
            alpha: node.attr_or::<f32>("alpha", 0.01).ok()?,
        }),
        "Clip" if opset < 11 => Some(Act::Clip {
            min: node.attr_or::<f32>("min", f32::NEG_INFINITY).ok()?,
            max: node.attr_or::<f32>("max", f32::INFINITY).ok()?,
        }),
        "Clip" => {
            let bound = |i: usize, default: f32| -> Option<f32> {
                match step.inputs.get(i).copied().flatten() {
                    None => Some(default),
                    Some(s) => {
                        let v = consts[s].as_ref()?.as_f32()?;
                        (v.len() == 1).then(|| v.iter().next().copied())?
                    }
                }
            };
            Some(Act::Clip {
                min: bound(1, f32::NEG_INFINITY)?,
                max: bound(2, f32::INFINITY)?,
            })
        }
        _ => None,
    }
}

/// Fuses Linear chains in `steps` (see the module docs). `opset` is the default domain's.
pub(super) fn fuse_float_linear(
    graph: &Graph,
    steps: &mut Vec<Step>,
    consts: &[Option<Value>],
    graph_outs: &HashSet<usize>,
    opset: i64,
) {
    let mut readers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, st) in steps.iter().enumerate() {
        for &s in st.inputs.iter().flatten() {
            readers.entry(s).or_default().push(i);
        }
    }
    // The sole reader of a step's single output, when the output may disappear.
    let sole_reader = |st: &Step| -> Option<usize> {
        let [Some(o)] = st.outputs[..] else {
            return None;
        };
        if graph_outs.contains(&o) {
            return None;
        }
        match readers.get(&o).map(Vec::as_slice) {
            Some(&[j]) => Some(j),
            _ => None,
        }
    };
    let mut drop = HashSet::new();
    'chains: for i in 0..steps.len() {
        let st = &steps[i];
        if !st.onnx_domain || !(st.op_type == "MatMul" || st.op_type == "Gemm") {
            continue;
        }
        let node = &graph.nodes[st.node_index];
        let const_inputs: Vec<Option<&Value>> = st
            .inputs
            .iter()
            .map(|s| s.and_then(|s| consts[s].as_ref()))
            .collect();
        if const_inputs.get(1).copied().flatten().is_none() {
            continue;
        }
        let mut chain = vec![i];
        let mut bias = None;
        let mut act = None;
        let mut cur = i;
        // An Add of a constant row.
        if st.op_type == "MatMul"
            && let Some(j) = sole_reader(&steps[cur])
            && steps[j].onnx_domain
            && steps[j].op_type == "Add"
            && steps[j].outputs.len() == 1
        {
            let o = steps[cur].outputs[0];
            let other = match steps[j].inputs[..] {
                [x, Some(c)] | [Some(c), x] if x == o && Some(c) != o => consts[c].as_ref(),
                _ => None,
            };
            if let Some(c) = other {
                bias = Some(c);
                chain.push(j);
                cur = j;
            }
        }
        if let Some(j) = sole_reader(&steps[cur])
            && steps[j].onnx_domain
            && steps[j].outputs.len() == 1
            && steps[j].inputs.first().copied().flatten() == steps[cur].outputs[0]
            && let Some(a) = activation(&graph.nodes[steps[j].node_index], &steps[j], consts, opset)
        {
            act = Some(a);
            chain.push(j);
        }
        if chain.len() == 1 {
            continue;
        }
        let base = if st.op_type == "MatMul" {
            const_inputs[1].and_then(Linear::matmul)
        } else {
            let ctx = BuildCtx {
                opset,
                const_inputs: const_inputs.clone(),
            };
            Linear::gemm(node, &ctx).ok().flatten()
        };
        let Some(mut linear) = base else { continue };
        if let Some(b) = bias {
            match linear.with_bias(b) {
                Some(l) => linear = l,
                // Not a row bias: fuse nothing here.
                None => continue,
            }
        }
        if let Some(a) = act {
            linear = linear.with_act(a).expect("no activation yet");
        }
        // The fused step reads the first stage's inputs, then the later stages' other inputs.
        let mut inputs = steps[i].inputs.clone();
        let mut stages = Vec::with_capacity(chain.len());
        let mut prev_out = None;
        let mut names = Vec::new();
        let mut types = Vec::new();
        for &j in &chain {
            let st = &mut steps[j];
            let ins = if prev_out.is_none() {
                (0..st.inputs.len()).map(StageIn::Input).collect()
            } else {
                st.inputs
                    .iter()
                    .map(|s| match s {
                        None => StageIn::Absent,
                        Some(s) if Some(*s) == prev_out => StageIn::Prev,
                        Some(s) => {
                            inputs.push(Some(*s));
                            StageIn::Input(inputs.len() - 1)
                        }
                    })
                    .collect()
            };
            // The product's fallback is the unpacked op, so the weight is not kept packed
            // twice; the later stages keep their own ops.
            let op = match (stages.is_empty(), st.op_type.as_str()) {
                (true, "MatMul") => linalg::unpacked_matmul_op(),
                (true, _) => match linalg::unpacked_gemm_op(node) {
                    Ok(op) => op,
                    Err(_) => continue 'chains,
                },
                (false, _) => {
                    let placeholder: Box<dyn Op> =
                        Box::new(FnOp(|_: &[Option<&Value>]| Ok(vec![])));
                    std::mem::replace(&mut st.op, placeholder)
                }
            };
            stages.push(Stage { op, inputs: ins });
            prev_out = st.outputs[0];
            names.push(st.node.clone());
            types.push(st.op_type.clone());
        }
        let last = *chain.last().expect("two stages");
        let outputs = steps[last].outputs.clone();
        let op = Box::new(FusedLinear { linear, stages });
        place_fused_first(
            steps, &chain, op, &names, &types, inputs, outputs, &mut drop,
        );
    }
    drop_steps(steps, &drop);
}
