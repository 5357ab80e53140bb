//! Constant values a rewriter may read: initializers of the node's graph and of every
//! enclosing graph (inner scopes shadow outer ones), plus values the driver folds cheaply
//! itself: `Constant` (its `value` tensor), `Identity` and `Transpose` of a constant (torch's
//! dynamo exporter feeds Linear weights as `MatMul(x, Transpose(W))`).
//!
//! Longer chains (Slice/Concat/Reshape over recurrent weights) need the runtime to fold; a
//! rewriter that finds no constant here reports the node as skipped.

use std::collections::HashMap;

use indexmap::IndexMap;
use ndarray::IxDyn;

use crate::ir::{Graph, Node, Tensor};
use crate::onnx::tensor_proto::DataType;

/// One graph's constants, linked to the enclosing graph's.
pub struct ConstScope<'a> {
    parent: Option<&'a ConstScope<'a>>,
    initializers: &'a IndexMap<String, Tensor>,
    folded: HashMap<String, Tensor>,
}

impl<'a> ConstScope<'a> {
    /// The constants of `g` seen from inside it, with `parent` for outer-scope names.
    pub fn new(g: &'a Graph, parent: Option<&'a ConstScope<'a>>) -> Self {
        let mut s = ConstScope {
            parent,
            initializers: &g.initializers,
            folded: HashMap::new(),
        };
        let order = g.topo_order().unwrap_or_default();
        for i in order {
            let n = &g.nodes[i];
            if let Some(t) = s.fold(n) {
                s.folded.insert(t.name().to_string(), t);
            }
        }
        s
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        if name.is_empty() {
            return None;
        }
        self.initializers
            .get(name)
            .or_else(|| self.folded.get(name))
            .or_else(|| self.parent.and_then(|p| p.get(name)))
    }

    fn fold(&self, n: &Node) -> Option<Tensor> {
        if !n.domain().is_empty() || n.outputs().len() != 1 {
            return None;
        }
        let out = n.outputs()[0].clone();
        let mut t = match n.op_type() {
            "Constant" => n.attr_tensor("value").ok().flatten()?,
            "Identity" => self.get(n.input(0)?)?.clone(),
            "Transpose" => {
                let x = self.get(n.input(0)?)?;
                let perm = n.transpose_perm(x.dims().len())?;
                match x.data_type().ok()? {
                    DataType::Float => transpose::<f32>(x, &perm)?,
                    DataType::Float16 => transpose::<half::f16>(x, &perm)?,
                    _ => return None,
                }
            }
            _ => return None,
        };
        t.proto.name = Some(out);
        Some(t)
    }
}

fn transpose<T: crate::ir::Element>(x: &Tensor, perm: &[usize]) -> Option<Tensor> {
    let a = x.view::<T>().ok()?;
    let p = a.view().permuted_axes(IxDyn(perm));
    Some(Tensor::from_array(x.name(), &p.as_standard_layout().view()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::attr_ints;

    #[test]
    fn folds_transpose_and_sees_outer_scope() {
        let mut outer = Graph::default();
        let w = ndarray::arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]).into_dyn();
        outer.add_initializer(Tensor::from_array("w", &w.view()));
        let mut inner = Graph::default();
        inner.nodes.push(
            Node::new("t", "Transpose", "", vec!["w".into()], vec!["wt".into()])
                .with_attr(attr_ints("perm", vec![1, 0])),
        );
        let o = ConstScope::new(&outer, None);
        let i = ConstScope::new(&inner, Some(&o));
        let wt = i.get("wt").unwrap().to_array::<f32>().unwrap();
        assert_eq!(wt, w.t().to_owned().into_dyn());
        assert!(i.get("w").is_some());
        assert!(o.get("wt").is_none());
    }
}
