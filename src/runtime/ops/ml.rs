//! The `ai.onnx.ml` ops whose inputs and outputs are plain numeric tensors:
//!
//! - `Binarizer` (1): `x > threshold` as 1 or 0, in `x`'s type.
//! - `ArrayFeatureExtractor` (1): `x[..., indices]` over the last axis, with onnxruntime's
//!   shapes: a 1-D `x` gives `[1, k]`; otherwise `x`'s leading dims then `k` (the count of
//!   all indices).
//! - `TreeEnsemble` (5): each tree of `tree_roots` routes a row of `X [N, F]` from its root
//!   through the nodes (`nodes_modes`: 0 `<=`, 1 `<`, 2 `>=`, 3 `>`, 4 `==`, 5 `!=`,
//!   6 membership in a NaN-separated run of `membership_values`; a NaN feature goes to the
//!   true branch when `nodes_missing_value_tracks_true`) to a leaf, whose weight adds to
//!   (`aggregate_function` 1 SUM, 0 AVERAGE over trees, 2 MIN, 3 MAX) output column
//!   `leaf_targetids`; then `post_transform` 0 NONE, 1 SOFTMAX, 2 LOGISTIC, 3 SOFTMAX_ZERO
//!   per row (4 PROBIT is refused). `*_leafs` flags say whether a branch index names a leaf
//!   or a node. Output `[N, n_targets]` in `X`'s float type.
//!
//! The string and map ops of the domain (LabelEncoder over strings, DictVectorizer, ...)
//! are not here: the runtime stores no strings.

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::Result;
use crate::ir::Node;
use crate::runtime::Value;

use super::util::{dname, err, ints, req};
use super::{BuildCtx, FnOp, Op, Registry};

const ML: &str = "ai.onnx.ml";

fn binarizer(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let t = node.attr_or::<f32>("threshold", 0.0)?;
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        Ok(vec![match req(ins, 0)? {
            Value::F32(a) => Value::F32(a.mapv(|x| if x > t { 1.0 } else { 0.0 })),
            Value::F64(a) => Value::F64(a.mapv(|x| if x > t as f64 { 1.0 } else { 0.0 })),
            Value::I64(a) => Value::I64(a.mapv(|x| i64::from(x as f64 > t as f64))),
            Value::I32(a) => Value::I32(a.mapv(|x| i32::from(x as f64 > t as f64))),
            other => {
                return Err(err(format!(
                    "expects a numeric input, got {}",
                    dname(other)
                )));
            }
        }])
    })))
}

fn array_feature_extractor(_: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    Ok(Box::new(FnOp(|ins: &[Option<&Value>]| {
        let x = req(ins, 0)?;
        let idx = ints(req(ins, 1)?, "indices")?;
        let shape = x.shape().to_vec();
        let Some(&last) = shape.last() else {
            return Err(err("expects an input of rank >= 1"));
        };
        let picks = idx
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .filter(|&i| i < last)
                    .ok_or_else(|| err(format!("index {i} is outside the last axis of {last}")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let mut out_shape = if shape.len() == 1 {
            vec![1]
        } else {
            shape[..shape.len() - 1].to_vec()
        };
        out_shape.push(picks.len());
        Ok(vec![crate::dispatch_value!(x, a => {
            let taken = a.select(Axis(a.ndim() - 1), &picks);
            let flat: Vec<_> = taken.iter().cloned().collect();
            ArrayD::from_shape_vec(IxDyn(&out_shape), flat)
                .map_err(|e| err(e.to_string()))?
                .into()
        })])
    })))
}

/// Where a branch goes: another node, or a leaf.
#[derive(Clone, Copy)]
enum Branch {
    Node(usize),
    Leaf(usize),
}

#[derive(Clone, Copy)]
enum Cmp {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    /// A range of `TreeEnsemble::members`.
    Member(usize, usize),
}

struct TreeNode {
    cmp: Cmp,
    split: f64,
    feature: usize,
    missing_true: bool,
    yes: Branch,
    no: Branch,
}

#[derive(Clone, Copy, PartialEq)]
enum Aggregate {
    Average,
    Sum,
    Min,
    Max,
}

#[derive(Clone, Copy, PartialEq)]
enum Post {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
}

struct TreeEnsemble {
    nodes: Vec<TreeNode>,
    members: Vec<f64>,
    leaf_targets: Vec<usize>,
    leaf_weights: Vec<f64>,
    roots: Vec<Branch>,
    targets: usize,
    aggregate: Aggregate,
    post: Post,
}

fn f64s(node: &Node, name: &str) -> Result<Option<Vec<f64>>> {
    match node.attr_tensor(name)? {
        None => Ok(None),
        Some(t) => {
            let v = Value::from_tensor(&t)?;
            let f = match &v {
                Value::F32(a) => a.iter().map(|&x| x as f64).collect(),
                Value::F64(a) => a.iter().copied().collect(),
                Value::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
                Value::U8(a) => a.iter().map(|&x| x as f64).collect(),
                Value::I32(a) => a.iter().map(|&x| x as f64).collect(),
                Value::I64(a) => a.iter().map(|&x| x as f64).collect(),
                other => {
                    return Err(node.error(format!("attribute '{name}' is {}", dname(other))));
                }
            };
            Ok(Some(f))
        }
    }
}

fn tree_ensemble(node: &Node, _: &BuildCtx) -> Result<Box<dyn Op>> {
    let req_f = |name: &str| {
        f64s(node, name)?.ok_or_else(|| node.error(format!("missing required attribute '{name}'")))
    };
    let req_i = |name: &str| node.attr_req::<Vec<i64>>(name);
    let splits = req_f("nodes_splits")?;
    let modes = req_f("nodes_modes")?;
    let features = req_i("nodes_featureids")?;
    let true_ids = req_i("nodes_truenodeids")?;
    let false_ids = req_i("nodes_falsenodeids")?;
    let true_leaf = req_i("nodes_trueleafs")?;
    let false_leaf = req_i("nodes_falseleafs")?;
    let leaf_targets = req_i("leaf_targetids")?;
    let leaf_weights = req_f("leaf_weights")?;
    let roots = req_i("tree_roots")?;
    let targets = node.attr_req::<i64>("n_targets")?;
    let missing = f64s(node, "nodes_missing_value_tracks_true")?.unwrap_or_default();
    let members = f64s(node, "membership_values")?.unwrap_or_default();
    let n = splits.len();
    if [
        modes.len(),
        features.len(),
        true_ids.len(),
        false_ids.len(),
        true_leaf.len(),
        false_leaf.len(),
    ]
    .iter()
    .any(|&l| l != n)
        || (!missing.is_empty() && missing.len() != n)
    {
        return Err(node.error("the nodes_* attributes do not all have one entry per node"));
    }
    if leaf_targets.len() != leaf_weights.len() {
        return Err(node.error("leaf_targetids and leaf_weights differ in length"));
    }
    let targets = usize::try_from(targets).map_err(|_| node.error("n_targets is negative"))?;
    let leaves = leaf_weights.len();
    let branch = |id: i64, leaf: i64| -> Result<Branch> {
        let i = usize::try_from(id).map_err(|_| node.error(format!("branch index {id}")))?;
        if leaf != 0 {
            (i < leaves).then_some(Branch::Leaf(i))
        } else {
            (i < n).then_some(Branch::Node(i))
        }
        .ok_or_else(|| node.error(format!("branch index {id} is out of range")))
    };
    // Membership nodes take the NaN-terminated runs of membership_values in node order.
    let mut run_start = 0;
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let cmp = match modes[i] as i64 {
            0 => Cmp::Leq,
            1 => Cmp::Lt,
            2 => Cmp::Gte,
            3 => Cmp::Gt,
            4 => Cmp::Eq,
            5 => Cmp::Neq,
            6 => {
                let len = members[run_start.min(members.len())..]
                    .iter()
                    .position(|v| v.is_nan())
                    .ok_or_else(|| node.error("membership_values has too few NaN-ended runs"))?;
                let c = Cmp::Member(run_start, run_start + len);
                run_start += len + 1;
                c
            }
            m => return Err(node.error(format!("node mode {m} is not defined"))),
        };
        nodes.push(TreeNode {
            cmp,
            split: splits[i],
            feature: usize::try_from(features[i])
                .map_err(|_| node.error(format!("feature id {}", features[i])))?,
            missing_true: missing.get(i).is_some_and(|&m| m != 0.0),
            yes: branch(true_ids[i], true_leaf[i])?,
            no: branch(false_ids[i], false_leaf[i])?,
        });
    }
    let leaf_targets = leaf_targets
        .iter()
        .map(|&t| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < targets)
                .ok_or_else(|| node.error(format!("leaf target {t} is not below n_targets")))
        })
        .collect::<Result<Vec<_>>>()?;
    let roots = roots
        .iter()
        .map(|&r| {
            let i = usize::try_from(r).ok().filter(|&i| i < n);
            let i = i.ok_or_else(|| node.error(format!("tree root {r} is out of range")))?;
            // A root whose both branches are the same leaf is a one-leaf tree.
            Ok(match (nodes[i].yes, nodes[i].no) {
                (Branch::Leaf(a), Branch::Leaf(b)) if a == b => Branch::Leaf(a),
                _ => Branch::Node(i),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let aggregate = match node.attr_or::<i64>("aggregate_function", 1)? {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        a => return Err(node.error(format!("aggregate_function {a} is not defined"))),
    };
    let post = match node.attr_or::<i64>("post_transform", 0)? {
        0 => Post::None,
        1 => Post::Softmax,
        2 => Post::Logistic,
        3 => Post::SoftmaxZero,
        p => return Err(node.error(format!("post_transform {p} is not supported"))),
    };
    let op = TreeEnsemble {
        nodes,
        members,
        leaf_targets,
        leaf_weights,
        roots,
        targets,
        aggregate,
        post,
    };
    Ok(Box::new(FnOp(move |ins: &[Option<&Value>]| {
        op.run(req(ins, 0)?)
    })))
}

impl TreeEnsemble {
    fn leaf(&self, row: &[f64], mut at: Branch) -> Result<usize> {
        // Each step moves to a node or a leaf; a cycle in a malformed model would loop, so
        // the walk is bounded by the node count.
        for _ in 0..=self.nodes.len() {
            let i = match at {
                Branch::Leaf(l) => return Ok(l),
                Branch::Node(i) => i,
            };
            let n = &self.nodes[i];
            let x = *row.get(n.feature).ok_or_else(|| {
                err(format!(
                    "feature {} is outside the row of {}",
                    n.feature,
                    row.len()
                ))
            })?;
            let hit = (n.missing_true && x.is_nan())
                || match n.cmp {
                    Cmp::Leq => x <= n.split,
                    Cmp::Lt => x < n.split,
                    Cmp::Gte => x >= n.split,
                    Cmp::Gt => x > n.split,
                    Cmp::Eq => x == n.split,
                    Cmp::Neq => x != n.split,
                    Cmp::Member(a, b) => self.members[a..b].contains(&x),
                };
            at = if hit { n.yes } else { n.no };
        }
        Err(err("the tree has a cycle"))
    }

    fn run(&self, x: &Value) -> Result<Vec<Value>> {
        let (rows, feats) = match x.shape() {
            [n, f] => (*n, *f),
            [f] => (1, *f),
            s => return Err(err(format!("expects X of shape [N, F], got {s:?}"))),
        };
        let data: Vec<f64> = match x {
            Value::F32(a) => a.iter().map(|&v| v as f64).collect(),
            Value::F64(a) => a.iter().copied().collect(),
            Value::F16(a) => a.iter().map(|v| v.to_f64()).collect(),
            other => return Err(err(format!("expects a float X, got {}", dname(other)))),
        };
        let init = match self.aggregate {
            Aggregate::Min => f64::MAX,
            Aggregate::Max => f64::MIN,
            _ => 0.0,
        };
        let mut out = vec![init; rows * self.targets];
        for r in 0..rows {
            let row = &data[r * feats..(r + 1) * feats];
            let acc = &mut out[r * self.targets..(r + 1) * self.targets];
            for &root in &self.roots {
                let l = self.leaf(row, root)?;
                let (t, w) = (self.leaf_targets[l], self.leaf_weights[l]);
                acc[t] = match self.aggregate {
                    Aggregate::Sum => acc[t] + w,
                    Aggregate::Average => acc[t] + w / self.roots.len() as f64,
                    Aggregate::Min => acc[t].min(w),
                    Aggregate::Max => acc[t].max(w),
                };
            }
            post_transform(self.post, acc);
        }
        let shape = IxDyn(&[rows, self.targets]);
        let to = |e: ndarray::ShapeError| err(e.to_string());
        Ok(vec![match x {
            Value::F64(_) => Value::F64(ArrayD::from_shape_vec(shape, out).map_err(to)?),
            Value::F16(_) => Value::F16(
                ArrayD::from_shape_vec(
                    shape,
                    out.iter().map(|&v| half::f16::from_f64(v)).collect(),
                )
                .map_err(to)?,
            ),
            _ => Value::F32(
                ArrayD::from_shape_vec(shape, out.iter().map(|&v| v as f32).collect())
                    .map_err(to)?,
            ),
        }])
    }
}

fn post_transform(post: Post, row: &mut [f64]) {
    match post {
        Post::None => {}
        Post::Logistic => row.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
        Post::Softmax | Post::SoftmaxZero => {
            // SOFTMAX_ZERO leaves zeros at zero and normalizes the rest.
            let keep = |v: f64| post == Post::Softmax || v != 0.0;
            let max = row
                .iter()
                .copied()
                .filter(|&v| keep(v))
                .fold(f64::MIN, f64::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = if keep(*v) { (*v - max).exp() } else { 0.0 };
                sum += *v;
            }
            if sum > 0.0 {
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
    }
}

pub fn register(r: &mut Registry) {
    r.register(ML, "Binarizer", binarizer);
    r.register(ML, "ArrayFeatureExtractor", array_feature_extractor);
    r.register(ML, "TreeEnsemble", tree_ensemble);
}
