//! Plan-time fusion of an LSTM cell's elementwise tail (planning only; the graph is not
//! changed).
//!
//! An LSTM written in standard ops (`onnx-dynq rewrite --lstm onnx` puts one in each Scan
//! body; exporters unroll them the same way) ends every step with
//!
//! ```text
//! [Add(x_t, hR) ->] Split(4 equal parts along the last axis) -> p0..p3
//! a_k = Sigmoid|Tanh(p_k)
//! c = Add(Mul(a_f, c_prev), Mul(a_i, a_g))
//! h = Mul(a_o, Sigmoid|Tanh(c))
//! ```
//!
//! (operands of Add/Mul in either order; which part plays which role is read from the
//! dataflow, not assumed). Run node by node that is ten or more steps per time step, each with
//! its own allocation and pass over small arrays; here it becomes one step that makes one pass
//! per row and writes `c` and `h`.
//!
//! The fused step computes exactly what the nodes compute, in the same order of operations
//! (`(a_f·c_prev) + (a_i·a_g)` with no fused multiply-add; the activations are the f32 kernels
//! the `Sigmoid`/`Tanh` ops use), so outputs are bit-identical. It takes that path when the
//! inputs are f32, `c_prev` has the shape of one part, and the Add's operands (when fused) have
//! one shape; otherwise (broadcasting, other float types, a split along another axis) it runs
//! the original ops one after the other.
//!
//! Conditions: every intermediate value (the Add's output, the parts, the activations, the
//! products, `tanh(c)`) has exactly one reader in the chain and is not a graph output; `c` may
//! have other readers, all after the chain's last step (where the fused step is placed);
//! Split's sizes are absent or four equal constants.

use std::collections::{HashMap, HashSet};

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Graph;
use crate::runtime::Value;
use crate::runtime::kernels::activation::{sigmoid_inplace, tanh_inplace};
use crate::runtime::kernels::gemm_f32::output_buffer;
use crate::runtime::ops::Op;
use crate::runtime::ops::util::err;

use super::step_links::{Links, drop_steps, place_fused, single_output};
use super::{Options, Step};

/// A gate activation the fused step applies.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Sigmoid,
    Tanh,
}

impl Act {
    fn of(st: &Step) -> Option<Act> {
        match (st.onnx_domain, st.op_type.as_str()) {
            (true, "Sigmoid") => Some(Act::Sigmoid),
            (true, "Tanh") => Some(Act::Tanh),
            _ => None,
        }
    }

    fn apply(self, xs: &mut [f32]) {
        match self {
            Act::Sigmoid => sigmoid_inplace(xs),
            Act::Tanh => tanh_inplace(xs),
        }
    }
}

/// An original step, kept to run the chain node by node when the fast path does not apply.
struct Sub {
    op: Box<dyn Op>,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
}

/// The fused step. Its inputs are `ext` (the chain's external input slots, in that order);
/// its outputs `c` then `h`.
struct LstmCell {
    subs: Vec<Sub>,
    ext: Vec<usize>,
    /// Positions in `ext`: the gates (or the Add's two operands), and `c_prev`.
    gates: GateInput,
    c_prev: usize,
    /// Split's axis as written (checked to be the last one at run time).
    axis: i64,
    /// Activation per split part.
    acts: [Act; 4],
    /// Split part index of the roles f (times c_prev), i and g (times each other), o.
    f: usize,
    i: usize,
    g: usize,
    o: usize,
    /// The activation of `c` before the product with `a_o`.
    c_act: Act,
    /// Slots of `c` and `h`, to pick them from the node-by-node run.
    c_slot: usize,
    h_slot: usize,
}

#[derive(Clone, Copy)]
enum GateInput {
    One(usize),
    Sum(usize, usize),
}

impl LstmCell {
    /// The fast path; `None` when its conditions do not hold.
    fn fast(&self, ins: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
        let get = |p: usize| match ins.get(p).copied().flatten() {
            Some(Value::F32(a)) => Some(a),
            _ => None,
        };
        let cp = get(self.c_prev)?;
        let (first, second) = match self.gates {
            GateInput::One(p) => (get(p)?, None),
            GateInput::Sum(a, b) => (get(a)?, Some(get(b)?)),
        };
        if second.is_some_and(|b| b.shape() != first.shape()) {
            return None;
        }
        let shape = first.shape();
        let rank = shape.len();
        let axis = if self.axis < 0 {
            self.axis + rank as i64
        } else {
            self.axis
        };
        if rank == 0 || axis != rank as i64 - 1 {
            return None;
        }
        let four_h = shape[rank - 1];
        let h = four_h / 4;
        let mut part_shape = shape.to_vec();
        part_shape[rank - 1] = h;
        if four_h % 4 != 0 || cp.shape() != part_shape.as_slice() {
            return None;
        }
        let a = first.as_standard_layout();
        let a = a.as_slice()?;
        let mut gates = output_buffer(a.len());
        match second {
            Some(b) => {
                let b = b.as_standard_layout();
                for ((g, &x), &y) in gates.iter_mut().zip(a).zip(b.as_slice()?) {
                    *g = x + y;
                }
            }
            None => gates.copy_from_slice(a),
        }
        let cps = cp.as_standard_layout();
        let cps = cps.as_slice()?;
        let n = cps.len();
        let mut c = output_buffer(n);
        let mut hv = output_buffer(n);
        if h > 0 {
            for (r, row) in gates.chunks_exact_mut(four_h).enumerate() {
                for (k, part) in row.chunks_exact_mut(h).enumerate() {
                    self.acts[k].apply(part);
                }
                let part = |k: usize| &row[k * h..(k + 1) * h];
                let (af, ai, ag) = (part(self.f), part(self.i), part(self.g));
                let span = r * h..(r + 1) * h;
                for j in 0..h {
                    c[span.start + j] = af[j] * cps[span.start + j] + ai[j] * ag[j];
                }
                let hr = &mut hv[span.clone()];
                hr.copy_from_slice(&c[span]);
                self.c_act.apply(hr);
                for (x, &o) in hr.iter_mut().zip(part(self.o)) {
                    *x *= o;
                }
            }
        }
        let mk = |v: Vec<f32>| {
            ArrayD::from_shape_vec(part_shape.clone(), v)
                .map(Value::F32)
                .map_err(|e| err(format!("internal: {e}")))
        };
        Some(mk(c).and_then(|c| Ok(vec![c, mk(hv)?])))
    }

    /// The original ops, one after the other.
    fn node_by_node(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let mut vals: HashMap<usize, Value> = HashMap::new();
        for sub in &self.subs {
            let outs = {
                let args: Vec<Option<&Value>> = sub
                    .inputs
                    .iter()
                    .map(|s| {
                        s.and_then(|s| match self.ext.iter().position(|&e| e == s) {
                            Some(p) => ins.get(p).copied().flatten(),
                            None => vals.get(&s),
                        })
                    })
                    .collect();
                sub.op.run(&args)?
            };
            for (slot, v) in sub.outputs.iter().zip(outs) {
                if let Some(s) = slot {
                    vals.insert(*s, v);
                }
            }
        }
        let mut take = |s: usize| {
            vals.remove(&s)
                .ok_or_else(|| err("internal: the fused LSTM cell lost an output"))
        };
        Ok(vec![take(self.c_slot)?, take(self.h_slot)?])
    }
}

impl Op for LstmCell {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        match self.fast(ins) {
            Some(r) => r,
            None => self.node_by_node(ins),
        }
    }
}

fn two_inputs(st: &Step) -> Option<(usize, usize)> {
    match st.inputs[..] {
        [Some(a), Some(b)] => Some((a, b)),
        _ => None,
    }
}

fn is(st: &Step, op: &str) -> bool {
    st.onnx_domain && st.op_type == op
}

/// Whether Split's sizes are absent or four equal constants.
fn equal_split(steps: &[Step], si: usize, graph: &Graph, consts: &[Option<Value>]) -> bool {
    let st = &steps[si];
    let Some(node) = graph.nodes.get(st.node_index) else {
        return false;
    };
    let sizes: Option<Vec<i64>> = match st.inputs.get(1).copied().flatten() {
        Some(s) => match consts.get(s).and_then(Option::as_ref) {
            Some(Value::I64(a)) => Some(a.iter().copied().collect()),
            _ => return false,
        },
        None => match node.attr::<Vec<i64>>("split") {
            Ok(v) => v,
            Err(_) => return false,
        },
    };
    match sizes {
        Some(v) => v.len() == 4 && v.iter().all(|&x| x == v[0]),
        None => true,
    }
}

/// One matched chain: the fused op and the steps it replaces.
struct Chain {
    steps: Vec<usize>,
    cell: LstmCell,
}

fn match_split(
    steps: &[Step],
    si: usize,
    graph: &Graph,
    consts: &[Option<Value>],
    graph_outs: &HashSet<usize>,
    idx: &Links,
) -> Option<(Vec<usize>, Vec<usize>, GateSlots)> {
    let split = &steps[si];
    if !is(split, "Split") || split.outputs.len() != 4 {
        return None;
    }
    let parts: Vec<usize> = split.outputs.iter().copied().collect::<Option<_>>()?;
    let g_in = split.inputs.first().copied().flatten()?;
    if !equal_split(steps, si, graph, consts) {
        return None;
    }
    let axis = graph
        .nodes
        .get(split.node_index)?
        .attr_or::<i64>("axis", 0)
        .ok()?;
    let only = |s: usize| idx.only_reader(s, graph_outs);
    // Activation per part, and the Mul reading each activation.
    let mut acts = Vec::new();
    let mut act_steps = Vec::new();
    let mut act_out = Vec::new();
    let mut muls = Vec::new();
    for &p in &parts {
        let ai = only(p)?;
        acts.push(Act::of(&steps[ai])?);
        let a = single_output(&steps[ai])?;
        let mi = only(a)?;
        if !is(&steps[mi], "Mul") {
            return None;
        }
        act_steps.push(ai);
        act_out.push(a);
        muls.push(mi);
    }
    // Two parts share a Mul (i·g); one Mul takes c_prev (f); one takes act(c) (o).
    let mut ig = None;
    for x in 0..4 {
        for y in x + 1..4 {
            if muls[x] == muls[y] {
                ig = Some((x, y));
            }
        }
    }
    let (i, g) = ig?;
    let rest: Vec<usize> = (0..4).filter(|&k| k != i && k != g).collect();
    let mig = muls[i];
    let cm = single_output(&steps[mig])?;
    let add_i = only(cm)?;
    if !is(&steps[add_i], "Add") {
        return None;
    }
    let (u, v) = two_inputs(&steps[add_i])?;
    let other = if u == cm { v } else { u };
    // The f part: its Mul's output is the Add's other operand.
    let (f, o) = match rest[..] {
        [p, q] if single_output(&steps[muls[p]]) == Some(other) => (p, q),
        [p, q] if single_output(&steps[muls[q]]) == Some(other) => (q, p),
        _ => return None,
    };
    if only(other)? != add_i {
        return None;
    }
    let (x, y) = two_inputs(&steps[muls[f]])?;
    let c_prev = if x == act_out[f] { y } else { x };
    if c_prev == act_out[f] || act_out.contains(&c_prev) {
        return None;
    }
    let c = single_output(&steps[add_i])?;
    // act(c) read only by o's Mul, whose other operand is a_o.
    let (x, y) = two_inputs(&steps[muls[o]])?;
    let t = if x == act_out[o] { y } else { x };
    let &ti = idx.producer.get(&t)?;
    let c_act = Act::of(&steps[ti])?;
    if steps[ti].inputs[..] != [Some(c)] || only(t)? != muls[o] {
        return None;
    }
    let h = single_output(&steps[muls[o]])?;
    if muls[f] == muls[o] || muls[f] == mig || muls[o] == mig {
        return None;
    }
    let mut chain = vec![si, add_i, ti, mig, muls[f], muls[o]];
    chain.extend(&act_steps);
    // Optional Add producing the gates.
    let mut gates = GateInput::One(g_in);
    if let Some(&pi) = idx.producer.get(&g_in)
        && is(&steps[pi], "Add")
        && only(g_in) == Some(si)
        && let Some((a, b)) = two_inputs(&steps[pi])
    {
        gates = GateInput::Sum(a, b);
        chain.push(pi);
    }
    chain.sort_unstable();
    let last = *chain.last()?;
    // Readers of c outside the chain must come after the fused step's place.
    if idx.readers.get(&c)?.iter().any(|&r| r != ti && r < last) {
        return None;
    }
    let acts: [Act; 4] = acts.try_into().ok()?;
    let roles = Roles {
        f,
        i,
        g,
        o,
        acts,
        c_act,
        axis,
    };
    Some((chain, vec![c, h, c_prev], GateSlots { gates, roles }))
}

struct Roles {
    f: usize,
    i: usize,
    g: usize,
    o: usize,
    acts: [Act; 4],
    c_act: Act,
    axis: i64,
}

struct GateSlots {
    gates: GateInput,
    roles: Roles,
}

/// Fuses every matching chain in `steps` (nothing with `options.no_kernel_fusion`).
pub(super) fn fuse_lstm_cells(
    steps: &mut Vec<Step>,
    graph: &Graph,
    consts: &[Option<Value>],
    graph_outs: &HashSet<usize>,
    options: &Options,
) {
    if options.no_kernel_fusion || !steps.iter().any(|s| is(s, "Split")) {
        return;
    }
    let idx = Links::new(steps);
    let mut found: Vec<(Vec<usize>, Vec<usize>, GateSlots)> = Vec::new();
    let mut used = HashSet::new();
    for si in 0..steps.len() {
        if let Some(m) = match_split(steps, si, graph, consts, graph_outs, &idx)
            && m.0.iter().all(|s| !used.contains(s))
        {
            used.extend(m.0.iter().copied());
            found.push(m);
        }
    }
    if found.is_empty() {
        return;
    }
    let mut chains = Vec::new();
    for (chain, slots, gs) in found {
        let [c, h, c_prev] = slots[..] else { continue };
        let inside: HashSet<usize> = chain
            .iter()
            .flat_map(|&s| steps[s].outputs.iter().flatten().copied())
            .collect();
        let mut ext: Vec<usize> = Vec::new();
        for &s in &chain {
            for &x in steps[s].inputs.iter().flatten() {
                if !inside.contains(&x) && !ext.contains(&x) {
                    ext.push(x);
                }
            }
        }
        let pos = |s: usize| ext.iter().position(|&e| e == s);
        let gates = match gs.gates {
            GateInput::One(a) => pos(a).map(GateInput::One),
            GateInput::Sum(a, b) => pos(a).zip(pos(b)).map(|(a, b)| GateInput::Sum(a, b)),
        };
        let (Some(gates), Some(cpp)) = (gates, pos(c_prev)) else {
            continue;
        };
        let subs = chain
            .iter()
            .map(|&s| {
                let st = &mut steps[s];
                Sub {
                    op: std::mem::replace(&mut st.op, Box::new(Taken)),
                    inputs: st.inputs.clone(),
                    outputs: st.outputs.clone(),
                }
            })
            .collect();
        let r = gs.roles;
        let cell = LstmCell {
            subs,
            ext,
            gates,
            c_prev: cpp,
            axis: r.axis,
            acts: r.acts,
            f: r.f,
            i: r.i,
            g: r.g,
            o: r.o,
            c_act: r.c_act,
            c_slot: c,
            h_slot: h,
        };
        chains.push(Chain { steps: chain, cell });
    }
    let mut drop = HashSet::new();
    for ch in chains {
        let names: Vec<&str> = ch
            .steps
            .iter()
            .map(|&s| steps[s].op_type.as_str())
            .collect();
        let op_type = format!("LstmCell({})", names.join("+"));
        let inputs = ch.cell.ext.iter().map(|&s| Some(s)).collect();
        let outputs = vec![Some(ch.cell.c_slot), Some(ch.cell.h_slot)];
        place_fused(
            steps,
            &ch.steps,
            Box::new(ch.cell),
            op_type,
            inputs,
            outputs,
            &mut drop,
        );
    }
    drop_steps(steps, &drop);
}

/// Stands in for an op moved into a fused step (that step is then dropped or replaced).
struct Taken;

impl Op for Taken {
    fn run(&self, _: &[Option<&Value>]) -> Result<Vec<Value>> {
        Err(err("internal: this op was moved into a fused step"))
    }
}
