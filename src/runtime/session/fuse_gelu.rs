//! Plan-time fusion of GELU in the erf form as exporters spell it out node by node (the graph
//! is not changed):
//!
//! ```text
//! d = Div(x, c_div)   e = Erf(d)   u = Add(e, c_add)
//! then  y = Mul(x, Mul(u, c_mul))   or   y = Mul(Mul(x, u), c_mul)
//! ```
//!
//! with single-element f32 constants `c_div`, `c_add`, `c_mul` (either operand order of Add
//! and Mul) becomes one step computing [`GeluErf::eval`] per element in one vectorized pass,
//! in place when `x` is not read afterwards. Every step is rounded to f32 as the nodes round
//! it, so the outputs are bit-identical to the unfused graph.
//!
//! A node joins only when it is the sole reader of the previous result and that result is not
//! a graph output. The fused step keeps the original ops and runs them one after the other
//! when its input is not f32 or a constant would broadcast it to a higher rank.

use std::collections::{HashMap, HashSet};

use crate::error::Result;
use crate::runtime::kernels::activation::GeluErf;
use crate::runtime::kernels::gemm_f32::output_buffer;
use crate::runtime::ops::{FnOp, Op};
use crate::runtime::value::Value;

use super::Step;
use super::fuse_linear::{Stage, StageIn, run_stages};
use super::step_links::{drop_steps, place_fused_first};

struct FusedGelu {
    gelu: GeluErf,
    /// The highest rank among the constants: a lower-rank x would be broadcast up.
    const_rank: usize,
    stages: Vec<Stage>,
}

impl FusedGelu {
    fn applies(&self, x: &Value) -> bool {
        matches!(x, Value::F32(a) if a.ndim() >= self.const_rank)
    }
}

impl Op for FusedGelu {
    fn run(&self, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        if let Some(x @ Value::F32(a)) = inputs.first().copied().flatten()
            && self.applies(x)
        {
            let src = a.as_standard_layout();
            if let Some(s) = src.as_slice() {
                let mut out = output_buffer(s.len());
                self.gelu.apply_into(s, &mut out);
                if let Ok(y) = ndarray::ArrayD::from_shape_vec(a.raw_dim(), out) {
                    return Ok(vec![Value::F32(y)]);
                }
            }
        }
        run_stages(&self.stages, inputs)
    }

    fn takes_first_input(&self) -> bool {
        true
    }

    fn run_taking(&self, first: Value, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
        if self.applies(&first)
            && let Value::F32(mut a) = first
        {
            if let Some(s) = a.as_slice_mut() {
                self.gelu.apply_inplace(s);
                return Ok(vec![Value::F32(a)]);
            }
            return self.run(&[Some(&Value::F32(a))]);
        }
        let mut ins = inputs.to_vec();
        ins[0] = Some(&first);
        run_stages(&self.stages, &ins)
    }
}

/// The value of a single-element f32 constant input, with its rank.
fn scalar(slot: Option<usize>, consts: &[Option<Value>]) -> Option<(f32, usize)> {
    let a = consts[slot?].as_ref()?.as_f32()?;
    if a.len() != 1 {
        return None;
    }
    a.iter().next().map(|&x| (x, a.ndim()))
}

/// Fuses erf-GELU chains in `steps` (see the module doc).
pub(super) fn fuse_gelu(
    steps: &mut Vec<Step>,
    consts: &[Option<Value>],
    graph_outs: &HashSet<usize>,
) {
    let mut readers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, st) in steps.iter().enumerate() {
        for &s in st.inputs.iter().flatten() {
            readers.entry(s).or_default().push(i);
        }
    }
    // The sole reader of a step's single output, when the output may disappear; the reader
    // must be a default-domain node of `op_type` with one output.
    let next = |steps: &[Step], i: usize, op_type: &str| -> Option<usize> {
        let [Some(o)] = steps[i].outputs[..] else {
            return None;
        };
        if graph_outs.contains(&o) {
            return None;
        }
        let &[j] = readers.get(&o)?.as_slice() else {
            return None;
        };
        let st = &steps[j];
        (st.onnx_domain && st.op_type == op_type && st.outputs.len() == 1).then_some(j)
    };
    // For a binary step reading `prev`: its other input.
    let other = |st: &Step, prev: usize| -> Option<usize> {
        match st.inputs[..] {
            [Some(a), Some(b)] if a == prev && b != prev => Some(b),
            [Some(a), Some(b)] if b == prev && a != prev => Some(a),
            _ => None,
        }
    };
    let mut drop = HashSet::new();
    for i in 0..steps.len() {
        let st = &steps[i];
        if !st.onnx_domain || st.op_type != "Div" || st.outputs.len() != 1 {
            continue;
        }
        let (Some(x), Some(c_div)) = (st.inputs.first().copied().flatten(), st.inputs.get(1))
        else {
            continue;
        };
        if consts[x].is_some() {
            continue;
        }
        let Some((div, r_div)) = scalar(*c_div, consts) else {
            continue;
        };
        let Some(e) = next(steps, i, "Erf") else {
            continue;
        };
        if steps[e].inputs.len() != 1 {
            continue;
        }
        let Some(a) = next(steps, e, "Add") else {
            continue;
        };
        let out = |j: usize| steps[j].outputs[0].expect("checked single output");
        let Some((add, r_add)) = other(&steps[a], out(e)).and_then(|c| scalar(Some(c), consts))
        else {
            continue;
        };
        let Some(m1) = next(steps, a, "Mul") else {
            continue;
        };
        let Some(m1_other) = other(&steps[m1], out(a)) else {
            continue;
        };
        let Some(m2) = next(steps, m1, "Mul") else {
            continue;
        };
        let Some(m2_other) = other(&steps[m2], out(m1)) else {
            continue;
        };
        // (u * c) * x, or (x * u) * c.
        let (scale_first, (mul, r_mul)) = if m2_other == x {
            match scalar(Some(m1_other), consts) {
                Some(c) => (true, c),
                None => continue,
            }
        } else if m1_other == x {
            match scalar(Some(m2_other), consts) {
                Some(c) => (false, c),
                None => continue,
            }
        } else {
            continue;
        };
        let chain = [i, e, a, m1, m2];
        // The fused step reads x first, then the constants, which the stages index.
        let mut inputs = vec![Some(x)];
        let mut stages = Vec::with_capacity(chain.len());
        let mut prev_out = None;
        let mut names = Vec::new();
        let mut types = Vec::new();
        for &j in &chain {
            let st = &mut steps[j];
            let ins = st
                .inputs
                .iter()
                .map(|s| match s {
                    None => StageIn::Absent,
                    Some(s) if Some(*s) == prev_out => StageIn::Prev,
                    Some(s) => match inputs.iter().position(|t| *t == Some(*s)) {
                        Some(k) => StageIn::Input(k),
                        None => {
                            inputs.push(Some(*s));
                            StageIn::Input(inputs.len() - 1)
                        }
                    },
                })
                .collect();
            let placeholder: Box<dyn Op> = Box::new(FnOp(|_: &[Option<&Value>]| Ok(vec![])));
            stages.push(Stage {
                op: std::mem::replace(&mut st.op, placeholder),
                inputs: ins,
            });
            prev_out = st.outputs[0];
            names.push(st.node.clone());
            types.push(st.op_type.clone());
        }
        let outputs = steps[m2].outputs.clone();
        let op = Box::new(FusedGelu {
            gelu: GeluErf {
                div,
                add,
                mul,
                scale_first,
            },
            const_rank: r_div.max(r_add).max(r_mul),
            stages,
        });
        place_fused_first(
            steps, &chain, op, &names, &types, inputs, outputs, &mut drop,
        );
    }
    drop_steps(steps, &drop);
}
