//! `MatMul` + `Add` of a constant bias: one Linear unit.
//!
//! - 2-D: `Gemm(A, B, C)` (opset 11+, where C is optional and unidirectionally broadcast to
//!   `[M, N]`), when A and B have rank 2, the element type is a float type Gemm takes, and the
//!   bias has rank <= 2 with each dim 1 or equal to `[M, N]`'s. The Gemm keeps the MatMul's
//!   name (so `--exclude`/`--include` by that name keep working) and writes the Add's output.
//!   Off when [`FuseOptions::matmul_to_gemm`](super::FuseOptions) is false: then 2-D is
//!   handled like N-D.
//! - Otherwise (A with batch or sequence dims): the MatMul stays, and the Add is put in the
//!   form the quantizer and the runtime's fused Linear kernels expect: the product first and a
//!   1-D `[N]` bias second (exporters write `Add(bias, x)`; a `[1, .., 1, N]` bias becomes a
//!   zero-copy `[N]` view when that cannot change the output's rank). The quantized MatMul's
//!   rescale Mul then feeds this Add directly. Fires only when something changes.
//! - A `Gemm` without C followed by such an Add gets the bias as its C (beta reset to 1, as
//!   beta only ever scaled C), opset 11+ where C is optional.

use crate::error::Result;
use crate::ir::shape::Dim;
use crate::ir::{Graph, NameGen, Node, Tensor};
use crate::onnx::tensor_proto::DataType;
use crate::passes::pattern::{self, Edit, Match, MatchCtx, Pattern, Slot, Step};

use super::{Pass, PassEnv};

pub const PASS: Pass = Pass {
    name: "matmul_add",
    run,
};

const PATTERN: Pattern = Pattern {
    steps: &[
        Step::op(&["MatMul"]),
        Step::op(&["Add"]).from(Slot::Any).check(has_const_input),
    ],
};

const GEMM_ADD: Pattern = Pattern {
    steps: &[
        Step::op(&["Gemm"]).check(no_c),
        Step::op(&["Add"]).from(Slot::Any).check(has_const_input),
    ],
};

fn no_c(n: &Node, cx: &MatchCtx) -> bool {
    cx.opset >= 11 && n.input(2).is_none()
}

fn gemm_bias(cx: &MatchCtx, m: &Match, _: &mut NameGen) -> Option<Edit> {
    let (gi, ai) = (m.at(0)?, m.at(1)?);
    let (gemm, add) = (&cx.graph.nodes[gi], &cx.graph.nodes[ai]);
    let y = gemm.outputs().first()?;
    let pos = add.inputs().iter().position(|i| i == y)?;
    let bias_name = add.input(1 - pos)?;
    let bias = cx.constant(bias_name)?;
    if !matches!(
        bias.data_type().ok()?,
        DataType::Float | DataType::Float16 | DataType::Double
    ) {
        return None;
    }
    let out = cx.type_of(y)?.shape.clone()?;
    let [m_dim, n_dim] = out.as_slice() else {
        return None;
    };
    if !gemm_bias_ok(bias.dims(), m_dim, n_dim.known()?) {
        return None;
    }
    let mut fused = gemm.clone();
    fused.proto.input.truncate(2);
    fused.proto.input.push(bias_name.to_string());
    fused.proto.attribute.retain(|a| a.name() != "beta");
    fused.proto.output = vec![add.outputs().first()?.clone()];
    Some(Edit::default().put(gi, vec![fused]).remove(ai))
}

fn has_const_input(n: &Node, cx: &MatchCtx) -> bool {
    n.inputs().iter().any(|i| cx.constant(i).is_some())
}

/// Whether `bias` dims broadcast unidirectionally to `[m, n]` (Gemm's C).
fn gemm_bias_ok(bias: &[i64], m: &Dim, n: i64) -> bool {
    match bias {
        [] => true,
        [c] => *c == 1 || *c == n,
        [r, c] => (*c == 1 || *c == n) && (*r == 1 || m.known() == Some(*r)),
        _ => false,
    }
}

fn rewrite_any(cx: &MatchCtx, m: &Match, names: &mut NameGen) -> Option<Edit> {
    rewrite(cx, m, names, true)
}

fn rewrite_nd(cx: &MatchCtx, m: &Match, names: &mut NameGen) -> Option<Edit> {
    rewrite(cx, m, names, false)
}

fn rewrite(cx: &MatchCtx, m: &Match, names: &mut NameGen, to_gemm: bool) -> Option<Edit> {
    let (mi, ai) = (m.at(0)?, m.at(1)?);
    let (mm, add) = (&cx.graph.nodes[mi], &cx.graph.nodes[ai]);
    let y = mm.outputs().first()?;
    let pos = add.inputs().iter().position(|i| i == y)?;
    let bias_name = add.input(1 - pos)?;
    if bias_name == y {
        return None;
    }
    let bias = cx.constant(bias_name)?;
    let dt = bias.data_type().ok()?;
    if !matches!(dt, DataType::Float | DataType::Float16 | DataType::Double) {
        return None;
    }
    let a_shape = cx.type_of(mm.input(0)?)?.shape.clone();
    let b_shape = cx.type_of(mm.input(1)?)?.shape.clone();
    let out_shape = cx.type_of(y).and_then(|t| t.shape.clone());
    if to_gemm
        && let (Some(a), Some(b)) = (&a_shape, &b_shape)
        && a.len() == 2
        && b.len() == 2
        && cx.opset >= 11
        && let Some(n) = b[1].known()
        && gemm_bias_ok(bias.dims(), &a[0], n)
    {
        let gemm = Node::new(
            mm.name(),
            "Gemm",
            "",
            vec![
                mm.input(0)?.to_string(),
                mm.input(1)?.to_string(),
                bias_name.to_string(),
            ],
            vec![add.outputs().first()?.clone()],
        );
        return Some(Edit::default().put(mi, vec![gemm]).remove(ai));
    }
    // N-D: bias second, as a vector.
    let dims = bias.dims();
    let n = *dims.last()?;
    let is_row = dims.len() > 1 && dims[..dims.len() - 1].iter().all(|&d| d == 1);
    let out_rank = out_shape.as_ref().map(Vec::len);
    let mut edit = Edit::default();
    let new_bias = if is_row && out_rank.is_some_and(|r| r >= dims.len()) {
        let name = names.fresh(&format!("{bias_name}_vector"));
        let mut t = bias.proto.clone();
        t.name = Some(name.clone());
        t.dims = vec![n];
        edit.initializers.push(Tensor::new(t).ok()?);
        name
    } else {
        bias_name.to_string()
    };
    if pos == 0 && new_bias == bias_name {
        return None;
    }
    let mut new_add = add.clone();
    new_add.proto.input = vec![y.clone(), new_bias];
    Some(edit.put(ai, vec![new_add]))
}

fn run(g: &mut Graph, env: &PassEnv, names: &mut NameGen) -> Result<usize> {
    let rewrite = if env.options.matmul_to_gemm {
        rewrite_any
    } else {
        rewrite_nd
    };
    let n = pattern::apply(g, env.opset, env.outer_types, names, &PATTERN, rewrite)?;
    Ok(n + pattern::apply(g, env.opset, env.outer_types, names, &GEMM_ADD, gemm_bias)?)
}
