//! Control flow: `If`, `Loop`, `Scan`. Their subgraphs are planned once as child sessions;
//! outer-scope values reach them as extra node inputs (appended by the session, see
//! [`Scope`]) and are passed down by reference on every run.
//!
//! - `If` (1, 11, 13, 16-21): a one-element bool `cond`; runs `then_branch` or `else_branch`
//!   (neither takes inputs) and returns its outputs.
//! - `Loop` (1, 11, 13, 16-21): inputs `M` (optional trip count), `cond` (optional), and N
//!   loop-carried initial values. The body takes `(iteration_num, cond, carried...)` and
//!   returns `(cond, carried..., scan_outputs...)`. It runs while `i < M` and `cond`; the node
//!   returns the final carried values, then each scan output stacked along a new axis 0.
//!   Without `M` and `cond` the loop runs until the body's condition is false.
//! - `Scan` (9, 11, 16-21): N state inputs then `num_scan_inputs` sequences, sliced along
//!   `scan_input_axes` (default 0) in `scan_input_directions` (0 forward, 1 reverse); the
//!   body takes `(state..., slices...)` and returns `(state..., outputs...)`; scan outputs are
//!   stacked along `scan_output_axes` in `scan_output_directions`. Opset 8's form has a
//!   leading batch axis on every input, the sequence on axis 1, `directions`, and an optional
//!   `sequence_lens` first input (all sequences must then have the full length).
//!   Sequence-typed values are not supported.

use std::collections::HashMap;

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};
use crate::ir::{Graph, Node};
use crate::map_same;
use crate::runtime::session::Session;
use crate::runtime::{Value, budget};

use super::data::{concat_values, reshape_value};
use super::util::{err, ints, norm_axis, opt, req, standard};
use super::{BuildCtx, Op, Registry, Scope};

/// A child session and where its outer values sit among the node's inputs.
pub(super) struct Body {
    session: Session,
    /// For each outer value the body reads, its index in the node's inputs.
    outer_at: Vec<usize>,
}

impl Body {
    pub(super) fn new(node: &Node, attr: &str, scope: &Scope, first_outer: usize) -> Result<Body> {
        let g: &Graph = node
            .subgraph(attr)
            .ok_or_else(|| node.error(format!("missing graph attribute '{attr}'")))?;
        let refs = g.outer_refs();
        let pos: HashMap<&str, usize> = scope
            .outer
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), first_outer + i))
            .collect();
        let outer_at = refs
            .iter()
            .map(|r| {
                pos.get(r.as_str()).copied().ok_or_else(|| {
                    node.error(format!("subgraph '{attr}' reads unknown value '{r}'"))
                })
            })
            .collect::<Result<_>>()?;
        let session = Session::from_graph(g, scope.opsets, &refs, scope.options)
            .map_err(|e| node.error(format!("in subgraph '{attr}': {e}")))?;
        Ok(Body { session, outer_at })
    }

    pub(super) fn run(&self, ins: &[Option<&Value>], inputs: Vec<Value>) -> Result<Vec<Value>> {
        let outer: Vec<&Value> = self
            .outer_at
            .iter()
            .map(|&i| req(ins, i))
            .collect::<Result<_>>()?;
        self.session.run_with(inputs, &outer)
    }

    fn num_inputs(&self) -> usize {
        self.session.inputs().count()
    }

    fn num_outputs(&self) -> usize {
        self.session.output_names().count()
    }
}

fn cond_of(v: &Value) -> Result<bool> {
    match v {
        Value::Bool(a) if a.len() == 1 => Ok(a.iter().next().copied().unwrap_or(false)),
        _ => Err(err(format!(
            "condition must be a one-element bool tensor, got {} {:?}",
            super::util::dname(v),
            v.shape()
        ))),
    }
}

struct IfOp {
    then_b: Body,
    else_b: Body,
}

impl Op for IfOp {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let b = if cond_of(req(ins, 0)?)? {
            &self.then_b
        } else {
            &self.else_b
        };
        b.run(ins, vec![])
    }
}

fn build_if(node: &Node, _: &BuildCtx, scope: &Scope) -> Result<Box<dyn Op>> {
    let first = node.inputs().len();
    Ok(Box::new(IfOp {
        then_b: Body::new(node, "then_branch", scope, first)?,
        else_b: Body::new(node, "else_branch", scope, first)?,
    }))
}

/// Stacks equally shaped values along a new axis.
pub fn stack_values(vals: &[Value], axis: usize) -> Result<Value> {
    let expanded = vals
        .iter()
        .map(|v| {
            let mut s = v.shape().to_vec();
            if axis > s.len() {
                return Err(err(format!("stack axis {axis} beyond rank {}", s.len())));
            }
            s.insert(axis, 1);
            reshape_value(v, &s)
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Value> = expanded.iter().collect();
    concat_values(&refs, axis as i64)
}

/// Element `i` along `axis`, with that axis removed.
fn take_index(v: &Value, axis: usize, i: usize) -> Value {
    map_same!(v, a => take_at(a, axis, i))
}

/// [`take_index`] on one array: row-major runs of `prod(shape[axis+1..])` values when `a` is
/// row-major (a Scan's sequences usually are), else through an ndarray view.
fn take_at<T: Copy>(a: &ArrayD<T>, axis: usize, i: usize) -> ArrayD<T> {
    let shape = a.shape();
    if let Some(src) = a.as_slice()
        && axis < shape.len()
    {
        let len = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let outer: usize = shape[..axis].iter().product();
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let at = (o * len + i) * inner;
            out.extend_from_slice(&src[at..at + inner]);
        }
        let mut s = shape.to_vec();
        s.remove(axis);
        if let Ok(r) = ArrayD::from_shape_vec(IxDyn(&s), out) {
            return r;
        }
    }
    standard(a.index_axis(Axis(axis), i))
}

struct LoopOp {
    body: Body,
    n_carried: usize,
}

impl Op for LoopOp {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let max = opt(ins, 0)
            .map(|v| ints(v, "M"))
            .transpose()?
            .map(|v| v.first().copied().unwrap_or(0));
        let mut cond = opt(ins, 1).map(cond_of).transpose()?.unwrap_or(true);
        let mut carried: Vec<Value> = (0..self.n_carried)
            .map(|k| req(ins, 2 + k).cloned())
            .collect::<Result<_>>()?;
        let n_scan = self.body.num_outputs().saturating_sub(1 + self.n_carried);
        let mut scans: Vec<Vec<Value>> = vec![Vec::new(); n_scan];
        // The scan outputs gathered so far count as in use for the next iterations (a trip
        // count from data can pile up any amount of them).
        let (limit, used) = budget::active().unwrap_or((budget::default_budget(), 0));
        let mut held: u64 = 0;
        let mut i: i64 = 0;
        while cond && max.is_none_or(|m| i < m) {
            let _budget = budget::enter(limit, used.saturating_add(held));
            let mut inputs = vec![
                Value::I64(ndarray::arr0(i).into_dyn()),
                Value::Bool(ndarray::arr0(cond).into_dyn()),
            ];
            inputs.append(&mut carried);
            let mut outs = self.body.run(ins, inputs)?.into_iter();
            cond = cond_of(
                &outs
                    .next()
                    .ok_or_else(|| err("body returned no condition"))?,
            )?;
            carried = outs.by_ref().take(self.n_carried).collect();
            for (k, v) in outs.enumerate() {
                held = held.saturating_add(budget::value_bytes(&v));
                scans[k].push(v);
            }
            if used.saturating_add(held) > limit {
                return Err(budget::outputs_over_budget(
                    held,
                    used.saturating_add(held),
                    limit,
                ));
            }
            i += 1;
        }
        let mut result = carried;
        for s in scans {
            result.push(if s.is_empty() {
                // No iteration ran: an empty stack (element type unknown, f32 by default).
                Value::F32(ArrayD::zeros(IxDyn(&[0])))
            } else {
                stack_values(&s, 0)?
            });
        }
        Ok(result)
    }
}

fn build_loop(node: &Node, _: &BuildCtx, scope: &Scope) -> Result<Box<dyn Op>> {
    let n_in = node.inputs().len();
    if n_in < 2 {
        return Err(node.error("Loop needs inputs M and cond (either may be empty)"));
    }
    let body = Body::new(node, "body", scope, n_in)?;
    let n_carried = n_in - 2;
    if body.num_inputs() != 2 + n_carried {
        return Err(node.error(format!(
            "body takes {} inputs, expected {} (iteration, cond, {} carried)",
            body.num_inputs(),
            2 + n_carried,
            n_carried
        )));
    }
    Ok(Box::new(LoopOp { body, n_carried }))
}

struct ScanOp {
    body: Body,
    n_state: usize,
    n_scan_in: usize,
    in_axes: Vec<i64>,
    in_rev: Vec<bool>,
    out_axes: Vec<i64>,
    out_rev: Vec<bool>,
    /// Opset 8: a `sequence_lens` input comes first and every input has a batch axis.
    batched: bool,
}

impl ScanOp {
    /// One scan over unbatched state and sequences.
    fn scan(
        &self,
        ins: &[Option<&Value>],
        state: Vec<Value>,
        seqs: Vec<&Value>,
    ) -> Result<Vec<Value>> {
        let axes: Vec<usize> = seqs
            .iter()
            .zip(&self.in_axes)
            .map(|(v, &a)| norm_axis(a, v.shape().len()))
            .collect::<Result<_>>()?;
        let len = match seqs.first() {
            Some(v) => v.shape()[axes[0]],
            None => 0,
        };
        for (v, &a) in seqs.iter().zip(&axes) {
            if v.shape()[a] != len {
                return Err(err(format!(
                    "scan inputs differ in sequence length ({len} and {})",
                    v.shape()[a]
                )));
            }
        }
        let mut state = state;
        let n_out = self.body.num_outputs().saturating_sub(self.n_state);
        if n_out > 0 && len == 0 {
            return Err(err("Scan over an empty sequence"));
        }
        // Each step's scan outputs go straight to their place in the stacked result.
        let mut outs: Vec<Stacked> = (0..n_out)
            .map(|k| Stacked {
                axis: self.out_axes[k],
                rev: self.out_rev[k],
                buf: None,
            })
            .collect();
        for t in 0..len {
            let mut inputs = std::mem::take(&mut state);
            for (k, v) in seqs.iter().enumerate() {
                let i = if self.in_rev[k] { len - 1 - t } else { t };
                inputs.push(take_index(v, axes[k], i));
            }
            let mut r = self.body.run(ins, inputs)?.into_iter();
            state = r.by_ref().take(self.n_state).collect();
            for (o, v) in outs.iter_mut().zip(r) {
                o.put(len, t, v)?;
            }
        }
        let mut result = state;
        for o in outs {
            result.push(
                o.buf
                    .ok_or_else(|| err("Scan body returned too few outputs"))?,
            );
        }
        Ok(result)
    }
}

/// Copies `a` into `b`'s entry `pos` along `axis` (`b` has `a`'s shape with that axis
/// inserted): row-major runs of `prod(a.shape[axis..])` values when both are row-major
/// (always, for the body's outputs), else element by element.
fn put_at<T: Copy>(b: &mut ArrayD<T>, a: &ArrayD<T>, axis: usize, pos: usize) {
    let len = b.shape()[axis];
    let inner: usize = a.shape()[axis..].iter().product();
    if let (Some(src), Some(dst)) = (a.as_slice(), b.as_slice_mut()) {
        if inner > 0 {
            for (o, run) in src.chunks_exact(inner).enumerate() {
                let at = (o * len + pos) * inner;
                dst[at..at + inner].copy_from_slice(run);
            }
        }
        return;
    }
    b.index_axis_mut(Axis(axis), pos).assign(a);
}

/// One Scan output, stacked as the steps produce it: allocated from the first step's value
/// (with the sequence length inserted at `axis`), then each step's value is copied into its
/// place (saves collecting the steps' values and concatenating them at the end).
struct Stacked {
    axis: i64,
    rev: bool,
    buf: Option<Value>,
}

impl Stacked {
    /// Puts step `t`'s value `v` (of a sequence of `len` steps) in place.
    fn put(&mut self, len: usize, t: usize, v: Value) -> Result<()> {
        let rank = v.shape().len();
        let axis = norm_axis(self.axis, rank + 1)?;
        let pos = if self.rev { len - 1 - t } else { t };
        let buf = match &mut self.buf {
            Some(b) => b,
            None => {
                let mut shape = v.shape().to_vec();
                shape.insert(axis, len);
                budget::check_like(&v, &shape)?;
                self.buf.insert(
                    map_same!(&v, _a => ArrayD::from_elem(IxDyn(&shape), Default::default())),
                )
            }
        };
        let want = {
            let mut s = buf.shape().to_vec();
            s.remove(axis);
            s
        };
        if v.shape() != want.as_slice() {
            return Err(err(format!(
                "Scan body output changes shape between steps: {:?} then {:?}",
                want,
                v.shape()
            )));
        }
        macro_rules! put {
            ($($var:ident),*) => {
                match (buf, &v) {
                    $((Value::$var(b), Value::$var(a)) => put_at(b, a, axis, pos),)*
                    (b, a) => {
                        return Err(err(format!(
                            "Scan body output changes type between steps: {} then {}",
                            super::util::dname(b),
                            super::util::dname(a)
                        )));
                    }
                }
            };
        }
        put!(F32, F16, F64, I64, I32, I8, U8, Bool);
        Ok(())
    }
}

impl Op for ScanOp {
    fn run(&self, ins: &[Option<&Value>]) -> Result<Vec<Value>> {
        let off = usize::from(self.batched);
        let state: Vec<&Value> = (0..self.n_state)
            .map(|k| req(ins, off + k))
            .collect::<Result<_>>()?;
        let seqs: Vec<&Value> = (0..self.n_scan_in)
            .map(|k| req(ins, off + self.n_state + k))
            .collect::<Result<_>>()?;
        if !self.batched {
            return self.scan(ins, state.into_iter().cloned().collect(), seqs);
        }
        let batch = seqs
            .first()
            .or(state.first())
            .map(|v| v.shape().first().copied().unwrap_or(0))
            .unwrap_or(0);
        if let Some(v) = state
            .iter()
            .chain(&seqs)
            .find(|v| v.shape().first() != Some(&batch))
        {
            return Err(err(format!(
                "every Scan-8 input needs batch axis {batch} first, got shape {:?}",
                v.shape()
            )));
        }
        if let Some(lens) = opt(ins, 0) {
            let full = seqs
                .first()
                .map(|v| v.shape().get(1).copied().unwrap_or(0))
                .unwrap_or(0);
            if ints(lens, "sequence_lens")?
                .iter()
                .any(|&l| l as usize != full)
            {
                return Err(Error::Unsupported(
                    "Scan-8 with sequence_lens shorter than the sequence".into(),
                ));
            }
        }
        let mut per_batch: Vec<Vec<Value>> = Vec::with_capacity(batch);
        for b in 0..batch {
            let st = state.iter().map(|v| take_index(v, 0, b)).collect();
            let sq: Vec<Value> = seqs.iter().map(|v| take_index(v, 0, b)).collect();
            per_batch.push(self.scan(ins, st, sq.iter().collect())?);
        }
        let n = per_batch.first().map(Vec::len).unwrap_or(0);
        (0..n)
            .map(|k| {
                let col: Vec<Value> = per_batch.iter().map(|r| r[k].clone()).collect();
                stack_values(&col, 0)
            })
            .collect()
    }
}

fn build_scan(node: &Node, ctx: &BuildCtx, scope: &Scope) -> Result<Box<dyn Op>> {
    let n_in = node.inputs().len();
    let body = Body::new(node, "body", scope, n_in)?;
    let m = node.attr_req::<i64>("num_scan_inputs")? as usize;
    let batched = ctx.opset < 9;
    let off = usize::from(batched);
    if n_in < off + m {
        return Err(node.error(format!("has {n_in} inputs but num_scan_inputs = {m}")));
    }
    let n_state = n_in - off - m;
    let n_out = body.num_outputs().saturating_sub(n_state);
    let dirs = |name: &str, n: usize| -> Result<Vec<bool>> {
        let d = node.attr::<Vec<i64>>(name)?.unwrap_or_else(|| vec![0; n]);
        if d.len() != n {
            return Err(node.error(format!("'{name}' must have {n} entries")));
        }
        Ok(d.iter().map(|&x| x != 0).collect())
    };
    let (in_axes, in_rev, out_axes, out_rev) = if batched {
        (
            vec![0; m],
            dirs("directions", m)?,
            vec![0; n_out],
            vec![false; n_out],
        )
    } else {
        (
            node.attr::<Vec<i64>>("scan_input_axes")?
                .unwrap_or_else(|| vec![0; m]),
            dirs("scan_input_directions", m)?,
            node.attr::<Vec<i64>>("scan_output_axes")?
                .unwrap_or_else(|| vec![0; n_out]),
            dirs("scan_output_directions", n_out)?,
        )
    };
    if in_axes.len() != m || out_axes.len() != n_out {
        return Err(node.error("scan axes attributes have the wrong length"));
    }
    Ok(Box::new(ScanOp {
        body,
        n_state,
        n_scan_in: m,
        in_axes,
        in_rev,
        out_axes,
        out_rev,
        batched,
    }))
}

pub fn register(r: &mut Registry) {
    r.register_scoped("", "If", build_if);
    r.register_scoped("", "Loop", build_loop);
    r.register_scoped("", "Scan", build_scan);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stacking step by step equals stacking all values at the end ([`stack_values`]), for
    /// every axis, both directions, and a non-row-major step value.
    #[test]
    fn stacked_outputs_equal_stack_values_and_take_index_inverts_it() {
        let len = 4;
        let steps: Vec<Value> = (0..len)
            .map(|t| {
                let a = ndarray::Array::from_shape_fn(IxDyn(&[2, 3]), |i| {
                    (t * 100 + i[0] * 10 + i[1]) as f32
                });
                // One value transposed twice: same shape, not row-major in memory.
                if t == 2 {
                    let mut c = ArrayD::zeros(IxDyn(&[3, 2])).reversed_axes();
                    c.assign(&a);
                    Value::F32(c)
                } else {
                    Value::F32(a)
                }
            })
            .collect();
        for axis in [0i64, 1, 2, -1] {
            for rev in [false, true] {
                let mut s = Stacked {
                    axis,
                    rev,
                    buf: None,
                };
                for (t, v) in steps.iter().enumerate() {
                    s.put(len, t, v.clone()).unwrap();
                }
                let mut order = steps.clone();
                if rev {
                    order.reverse();
                }
                let want = stack_values(&order, norm_axis(axis, 3).unwrap()).unwrap();
                assert_eq!(s.buf.unwrap(), want, "axis {axis}, reverse {rev}");
            }
        }
        for axis in 0..3 {
            for (t, v) in steps.iter().enumerate() {
                let stacked = stack_values(&steps, axis).unwrap();
                assert_eq!(take_index(&stacked, axis, t), *v, "axis {axis}, step {t}");
            }
        }
        let mut s = Stacked {
            axis: 0,
            rev: false,
            buf: None,
        };
        s.put(2, 0, Value::F32(ArrayD::zeros(IxDyn(&[2])))).unwrap();
        assert!(s.put(2, 1, Value::F32(ArrayD::zeros(IxDyn(&[3])))).is_err());
        assert!(s.put(2, 1, Value::I64(ArrayD::zeros(IxDyn(&[2])))).is_err());
    }
}
