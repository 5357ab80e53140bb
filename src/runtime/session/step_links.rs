//! Who reads and who writes each slot among a session's planned steps: what the plan-time
//! fusions ([`super::fuse_int8`], [`super::fuse_lstm_cell`]) walk to match their chains.

use std::collections::{HashMap, HashSet};

use crate::runtime::ops::Op;

use super::Step;

/// Readers and producer of every slot, by step index.
pub(super) struct Links {
    pub readers: HashMap<usize, Vec<usize>>,
    pub producer: HashMap<usize, usize>,
}

impl Links {
    pub fn new(steps: &[Step]) -> Links {
        let mut links = Links {
            readers: HashMap::new(),
            producer: HashMap::new(),
        };
        for (i, st) in steps.iter().enumerate() {
            for &s in st.inputs.iter().flatten() {
                links.readers.entry(s).or_default().push(i);
            }
            for &s in st.outputs.iter().flatten() {
                links.producer.insert(s, i);
            }
        }
        links
    }

    /// The single reader of an intermediate slot that is not a graph output.
    pub fn only_reader(&self, slot: usize, graph_outs: &HashSet<usize>) -> Option<usize> {
        if graph_outs.contains(&slot) {
            return None;
        }
        match self.readers.get(&slot).map(Vec::as_slice) {
            Some(&[r]) => Some(r),
            _ => None,
        }
    }
}

/// The step's output slot when it has exactly one (named) output.
pub(super) fn single_output(st: &Step) -> Option<usize> {
    match st.outputs[..] {
        [Some(o)] => Some(o),
        _ => None,
    }
}

/// Replaces the chain `chain` (step indices, the last one largest) by one fused step at its
/// last step's place (that step's name and index are kept); the others are dropped from
/// `steps` by [`drop_steps`].
pub(super) fn place_fused(
    steps: &mut [Step],
    chain: &[usize],
    op: Box<dyn Op>,
    op_type: String,
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    drop: &mut HashSet<usize>,
) {
    let Some(&last) = chain.iter().max() else {
        return;
    };
    let st = &mut steps[last];
    st.op = op;
    st.op_type = op_type;
    st.inputs = inputs;
    st.outputs = outputs;
    st.frees = Vec::new();
    st.onnx_domain = false;
    drop.extend(chain.iter().copied().filter(|&s| s != last));
}

/// Replaces the chain `chain` (step indices, `chain[0]` first) by one fused step at its
/// first step's place, named after every node of the chain (`names`, `types` joined with
/// '+'); the others are marked in `drop` for [`drop_steps`].
#[allow(clippy::too_many_arguments)]
pub(super) fn place_fused_first(
    steps: &mut [Step],
    chain: &[usize],
    op: Box<dyn Op>,
    names: &[String],
    types: &[String],
    inputs: Vec<Option<usize>>,
    outputs: Vec<Option<usize>>,
    drop: &mut HashSet<usize>,
) {
    let Some(&first) = chain.first() else {
        return;
    };
    steps[first] = Step {
        op,
        node: names.join("+"),
        op_type: types.join("+"),
        inputs,
        outputs,
        frees: Vec::new(),
        onnx_domain: false,
        node_index: steps[first].node_index,
    };
    drop.extend(chain[1..].iter().copied());
}

/// Removes the steps whose indices are in `drop`.
pub(super) fn drop_steps(steps: &mut Vec<Step>, drop: &HashSet<usize>) {
    let mut k = 0;
    steps.retain(|_| {
        k += 1;
        !drop.contains(&(k - 1))
    });
}
