//! `Einsum` (12): sums of products over labelled axes, as `numpy.einsum`.
//!
//! The equation is terms of letters (`a-z`, `A-Z`) separated by `,`, one per input, with an
//! optional `->output`; spaces are ignored. A term may hold one `...` standing for the axes
//! its letters do not name; those axes broadcast across inputs (right-aligned, size 1
//! stretches). A letter repeated in one term takes the diagonal. Without `->` the output is
//! the `...` axes followed by the letters that occur once in the whole equation, sorted (by
//! character code, as numpy). Letters missing from the output are summed over.
//!
//! Floats (f32, f64, f16) are computed in f64 and integers (i64, i32, i8, u8) in wrapping
//! i64, then cast back to the input type. Two-input contractions that are a batched matrix
//! product once axes are permuted (no diagonals, no axis summed within one input, no
//! broadcasting) run as one; everything else runs the general index loop.

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::error::Result;
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;
use crate::runtime::Value;

use super::data::{reshape_value, transpose_value};
use super::util::{cast, dname, elem_count, err, from_vec, is_float};
use super::{BuildCtx, FnOp, Op, Registry};

/// An axis label: a letter, or the k-th (right-aligned) axis an ellipsis stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Label {
    /// Ellipsis axes sort before letters, as numpy puts them first in implicit outputs.
    Ell(usize),
    Letter(char),
}

/// One term: its letters, split around an ellipsis if it has one.
#[derive(Clone, Debug, PartialEq)]
struct Term {
    before: Vec<char>,
    ellipsis: bool,
    after: Vec<char>,
}

impl Term {
    fn parse(s: &str) -> Result<Term> {
        let (b, a, ellipsis) = match s.split_once("...") {
            Some((b, a)) => (b, a, true),
            None => (s, "", false),
        };
        let letters = |part: &str| -> Result<Vec<char>> {
            part.chars()
                .map(|c| {
                    if c.is_ascii_alphabetic() {
                        Ok(c)
                    } else {
                        Err(err(format!("invalid character '{c}' in einsum term '{s}'")))
                    }
                })
                .collect()
        };
        Ok(Term {
            before: letters(b)?,
            ellipsis,
            after: letters(a)?,
        })
    }

    fn letters(&self) -> usize {
        self.before.len() + self.after.len()
    }

    /// The labels of an operand of `rank` axes, with `ell` ellipsis axes in the whole equation.
    fn labels(&self, rank: usize, ell: usize) -> Result<Vec<Label>> {
        let n = self.letters();
        if rank < n || (!self.ellipsis && rank != n) {
            return Err(err(format!(
                "einsum term {self:?} does not fit an operand of rank {rank}"
            )));
        }
        let own = rank - n;
        let mut out: Vec<Label> = self.before.iter().map(|&c| Label::Letter(c)).collect();
        out.extend((ell - own..ell).map(Label::Ell));
        out.extend(self.after.iter().map(|&c| Label::Letter(c)));
        Ok(out)
    }
}

/// A parsed equation: input terms and the output term if explicit.
#[derive(Debug)]
struct Equation {
    inputs: Vec<Term>,
    output: Option<Term>,
}

impl Equation {
    fn parse(eq: &str) -> Result<Equation> {
        let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
        let (lhs, rhs) = match eq.split_once("->") {
            Some((l, r)) => (l.to_string(), Some(r.to_string())),
            None => (eq.clone(), None),
        };
        Ok(Equation {
            inputs: lhs.split(',').map(Term::parse).collect::<Result<_>>()?,
            output: rhs.as_deref().map(Term::parse).transpose()?,
        })
    }
}

/// The contraction planned for concrete input shapes.
struct Plan {
    /// Labels of each input's axes.
    in_labels: Vec<Vec<Label>>,
    out_labels: Vec<Label>,
    sizes: BTreeMap<Label, usize>,
}

fn plan(eq: &Equation, shapes: &[&[usize]]) -> Result<Plan> {
    if eq.inputs.len() != shapes.len() {
        return Err(err(format!(
            "einsum equation has {} terms for {} inputs",
            eq.inputs.len(),
            shapes.len()
        )));
    }
    let ell = eq
        .inputs
        .iter()
        .zip(shapes)
        .filter(|(t, _)| t.ellipsis)
        .map(|(t, s)| s.len().saturating_sub(t.letters()))
        .max()
        .unwrap_or(0);
    let in_labels: Vec<Vec<Label>> = eq
        .inputs
        .iter()
        .zip(shapes)
        .map(|(t, s)| t.labels(s.len(), ell))
        .collect::<Result<_>>()?;
    let mut sizes: BTreeMap<Label, usize> = BTreeMap::new();
    for (labels, shape) in in_labels.iter().zip(shapes) {
        for (&l, &d) in labels.iter().zip(shape.iter()) {
            let s = sizes.entry(l).or_insert(d);
            match (l, *s, d) {
                (_, a, b) if a == b => {}
                // Ellipsis axes broadcast.
                (Label::Ell(_), 1, b) => *s = b,
                (Label::Ell(_), _, 1) => {}
                _ => {
                    return Err(err(format!(
                        "einsum label {l:?} has sizes {s} and {d}",
                        s = *s
                    )));
                }
            }
        }
    }
    let out_labels = match &eq.output {
        Some(t) => {
            let has_ell = eq.inputs.iter().any(|t| t.ellipsis);
            if t.ellipsis && !has_ell {
                return Err(err("einsum output has '...' but no input does"));
            }
            let labels = t.labels(t.letters() + if t.ellipsis { ell } else { 0 }, ell)?;
            for l in &labels {
                if let Label::Letter(c) = l
                    && !sizes.contains_key(l)
                {
                    return Err(err(format!("einsum output label '{c}' is in no input")));
                }
            }
            let mut seen = labels.clone();
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Err(err("einsum output repeats a label"));
            }
            labels
        }
        None => {
            let mut count: BTreeMap<Label, usize> = BTreeMap::new();
            for l in in_labels.iter().flatten() {
                *count.entry(*l).or_default() += 1;
            }
            let mut out: Vec<Label> = (0..ell).map(Label::Ell).collect();
            out.extend(
                count
                    .iter()
                    .filter(|&(l, &n)| matches!(l, Label::Letter(_)) && n == 1)
                    .map(|(l, _)| *l),
            );
            out
        }
    };
    Ok(Plan {
        in_labels,
        out_labels,
        sizes,
    })
}

/// Element math of the contraction (f64 for floats, wrapping i64 for integers).
trait Acc: Copy + Default {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn one() -> Self;
}
impl Acc for f64 {
    fn add(self, o: Self) -> Self {
        self + o
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn one() -> Self {
        1.0
    }
}
impl Acc for i64 {
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    fn mul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    fn one() -> Self {
        1
    }
}

/// The general index loop: every combination of output and summed labels.
fn contract_loop<T: Acc>(p: &Plan, ins: &[&ArrayD<T>]) -> Result<ArrayD<T>> {
    let summed: Vec<Label> = p
        .sizes
        .keys()
        .filter(|l| !p.out_labels.contains(l))
        .copied()
        .collect();
    let all: Vec<Label> = p.out_labels.iter().chain(&summed).copied().collect();
    let dims: Vec<usize> = all.iter().map(|l| p.sizes[l]).collect();
    let oshape: Vec<usize> = dims[..p.out_labels.len()].to_vec();
    let n_out = elem_count(&oshape)?;
    let n_sum: usize = dims[p.out_labels.len()..].iter().product();
    let srcs: Vec<_> = ins.iter().map(|a| a.as_standard_layout()).collect();
    let srcs: Vec<&[T]> = srcs
        .iter()
        .map(|a| {
            a.as_slice()
                .ok_or_else(|| err("internal: non-contiguous data"))
        })
        .collect::<Result<_>>()?;
    // strides[i][j]: step in input i for label all[j]; repeated labels add up (diagonals),
    // absent or broadcast (size 1) axes step 0.
    let strides: Vec<Vec<usize>> = p
        .in_labels
        .iter()
        .zip(ins)
        .map(|(labels, a)| {
            let mut s = vec![0usize; all.len()];
            let mut acc = 1;
            for (ax, l) in labels.iter().enumerate().rev() {
                let d = a.shape()[ax];
                if d != 1
                    && let Some(j) = all.iter().position(|x| x == l)
                {
                    s[j] += acc;
                }
                acc *= d;
            }
            s
        })
        .collect();
    let mut out = Vec::with_capacity(n_out);
    let mut pos = vec![0usize; all.len()];
    let mut offs = vec![0usize; ins.len()];
    let k = p.out_labels.len();
    for _ in 0..n_out {
        let mut sum = T::default();
        for _ in 0..n_sum {
            let mut prod = T::one();
            for (src, &o) in srcs.iter().zip(&offs) {
                prod = prod.mul(src[o]);
            }
            sum = sum.add(prod);
            step(&mut pos, &mut offs, &dims, &strides, k, all.len());
        }
        out.push(sum);
        step(&mut pos, &mut offs, &dims, &strides, 0, k);
    }
    from_vec(&oshape, out)
}

/// Advances the odometer over labels `lo..hi` (last fastest), keeping the offsets in step.
fn step(
    pos: &mut [usize],
    offs: &mut [usize],
    dims: &[usize],
    strides: &[Vec<usize>],
    lo: usize,
    hi: usize,
) {
    for j in (lo..hi).rev() {
        pos[j] += 1;
        for (o, s) in offs.iter_mut().zip(strides) {
            *o += s[j];
        }
        if pos[j] < dims[j] {
            return;
        }
        for (o, s) in offs.iter_mut().zip(strides) {
            *o -= s[j] * dims[j];
        }
        pos[j] = 0;
    }
}

/// Runs `a·b` as a batched matrix product when the labels allow it: `None` when they don't.
fn contract_matmul(p: &Plan, a: &Value, b: &Value) -> Result<Option<Value>> {
    let (la, lb, lo) = (&p.in_labels[0], &p.in_labels[1], &p.out_labels);
    let unique = |l: &[Label]| {
        let mut s = l.to_vec();
        s.sort_unstable();
        s.windows(2).all(|w| w[0] != w[1])
    };
    let no_broadcast = la.iter().zip(a.shape()).all(|(l, &d)| p.sizes[l] == d)
        && lb.iter().zip(b.shape()).all(|(l, &d)| p.sizes[l] == d);
    // Each label must be batch (a, b, out), m (a, out), n (b, out) or k (a, b).
    let fits = |l: &Label| (la.contains(l) && lb.contains(l)) || lo.contains(l);
    if !(unique(la) && unique(lb) && no_broadcast && la.iter().chain(lb).all(fits)) {
        return Ok(None);
    }
    let pick = |f: &dyn Fn(&Label) -> bool| -> Vec<Label> {
        p.sizes.keys().filter(|l| f(l)).copied().collect()
    };
    let batch = pick(&|l| la.contains(l) && lb.contains(l) && lo.contains(l));
    let m = pick(&|l| la.contains(l) && !lb.contains(l));
    let n = pick(&|l| lb.contains(l) && !la.contains(l));
    let k = pick(&|l| la.contains(l) && lb.contains(l) && !lo.contains(l));
    let size = |ls: &[Label]| -> usize { ls.iter().map(|l| p.sizes[l]).product() };
    let perm_of = |from: &[Label], to: &[Label]| -> Vec<usize> {
        to.iter()
            .filter_map(|l| from.iter().position(|x| x == l))
            .collect()
    };
    let (nb, mm, nn, kk) = (size(&batch), size(&m), size(&n), size(&k));
    let a_order: Vec<Label> = [&batch[..], &m, &k].concat();
    let b_order: Vec<Label> = [&batch[..], &k, &n].concat();
    let a2 = reshape_value(&transpose_value(a, &perm_of(la, &a_order))?, &[nb, mm, kk])?;
    let b2 = reshape_value(&transpose_value(b, &perm_of(lb, &b_order))?, &[nb, kk, nn])?;
    let c_order: Vec<Label> = [&batch[..], &m, &n].concat();
    let c_shape: Vec<usize> = c_order.iter().map(|l| p.sizes[l]).collect();
    elem_count(&c_shape)?;
    fn mm_t<T: Acc>(a: &[T], b: &[T], nb: usize, m: usize, k: usize, n: usize) -> Vec<T> {
        let mut c = vec![T::default(); nb * m * n];
        for bi in 0..nb {
            for i in 0..m {
                let row = &mut c[(bi * m + i) * n..(bi * m + i + 1) * n];
                for p in 0..k {
                    let x = a[(bi * m + i) * k + p];
                    let brow = &b[(bi * k + p) * n..(bi * k + p + 1) * n];
                    for (r, &y) in row.iter_mut().zip(brow) {
                        *r = r.add(x.mul(y));
                    }
                }
            }
        }
        c
    }
    let c = match (&a2, &b2) {
        (Value::F64(x), Value::F64(y)) => {
            let (x, y) = (x.as_standard_layout(), y.as_standard_layout());
            let (x, y) = (x.as_slice(), y.as_slice());
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(None);
            };
            Value::F64(from_vec(&c_shape, mm_t(x, y, nb, mm, kk, nn))?)
        }
        (Value::I64(x), Value::I64(y)) => {
            let (x, y) = (x.as_standard_layout(), y.as_standard_layout());
            let (x, y) = (x.as_slice(), y.as_slice());
            let (Some(x), Some(y)) = (x, y) else {
                return Ok(None);
            };
            Value::I64(from_vec(&c_shape, mm_t(x, y, nb, mm, kk, nn))?)
        }
        _ => return Ok(None),
    };
    Ok(Some(transpose_value(&c, &perm_of(&c_order, lo))?))
}

fn einsum_values(eq: &Equation, ins: &[&Value]) -> Result<Value> {
    let first = ins
        .first()
        .ok_or_else(|| err("Einsum needs at least one input"))?;
    let dt = first.dtype();
    if let Some(o) = ins.iter().find(|v| v.dtype() != dt) {
        return Err(err(format!(
            "Einsum of {} and {} (inputs must share a type)",
            dname(first),
            dname(o)
        )));
    }
    let work = match dt {
        _ if is_float(dt) => DataType::Double,
        DataType::Bool => return Err(err("Einsum of bool")),
        _ => DataType::Int64,
    };
    let vals: Vec<Value> = ins.iter().map(|v| cast(v, work)).collect::<Result<_>>()?;
    let shapes: Vec<&[usize]> = vals.iter().map(|v| v.shape()).collect();
    let p = plan(eq, &shapes)?;
    if let [a, b] = vals.as_slice()
        && let Some(c) = contract_matmul(&p, a, b)?
    {
        return cast(&c, dt);
    }
    let out = match work {
        DataType::Double => {
            let arrs: Vec<&ArrayD<f64>> = vals.iter().filter_map(Value::as_f64).collect();
            Value::F64(contract_loop(&p, &arrs)?)
        }
        _ => {
            let arrs: Vec<&ArrayD<i64>> = vals.iter().filter_map(Value::as_i64).collect();
            Value::I64(contract_loop(&p, &arrs)?)
        }
    };
    cast(&out, dt)
}

fn einsum(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let eq = Equation::parse(&node.attr_req::<String>("equation")?)
        .map_err(|e| node.error(e.to_string()))?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        let vals: Vec<&Value> = ins.iter().flatten().copied().collect();
        Ok(vec![einsum_values(&eq, &vals)?])
    })))
}

pub fn register(r: &mut Registry) {
    r.register("", "Einsum", einsum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{IxDyn, array};

    fn run(eq: &str, ins: &[&Value]) -> Value {
        einsum_values(&Equation::parse(eq).unwrap(), ins).unwrap()
    }

    #[test]
    fn matmul_fast_path_matches_the_loop() {
        let a = Value::F64(ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
            (i[0] * 12 + i[1] * 4 + i[2]) as f64 - 7.0
        }));
        let b = Value::F64(ArrayD::from_shape_fn(IxDyn(&[4, 2, 5]), |i| {
            (i[0] * 3 + i[1] * 7 + i[2]) as f64 * 0.5
        }));
        let eq = Equation::parse("bij,jbk->kbi").unwrap();
        let p = plan(&eq, &[a.shape(), b.shape()]).unwrap();
        let fast = contract_matmul(&p, &a, &b).unwrap().unwrap();
        let slow = contract_loop(&p, &[a.as_f64().unwrap(), b.as_f64().unwrap()]).unwrap();
        assert_eq!(fast, Value::F64(slow));
    }

    #[test]
    fn diagonals_ellipsis_and_implicit_outputs() {
        let m = Value::I32(array![[1, 2], [3, 4]].into_dyn());
        assert_eq!(run("ii->i", &[&m]), Value::I32(array![1, 4].into_dyn()));
        assert_eq!(run("ii", &[&m]), Value::I32(ndarray::arr0(5).into_dyn()));
        // Implicit output sorts the free letters: "ba" gives the transpose.
        assert_eq!(
            run("ba", &[&m]),
            Value::I32(array![[1, 3], [2, 4]].into_dyn())
        );
        let v = Value::I32(array![10, 100].into_dyn());
        assert_eq!(
            run("...j,j->...", &[&m, &v]),
            Value::I32(array![210, 430].into_dyn())
        );
        let e = einsum_values(&Equation::parse("ij,j").unwrap(), &[&m]).unwrap_err();
        assert!(e.to_string().contains("2 terms for 1 inputs"), "{e}");
        assert!(Equation::parse("i1->i").is_err());
    }
}
