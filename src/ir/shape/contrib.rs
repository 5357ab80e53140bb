//! Element types and shapes of the onnxruntime contrib ops that its transformer optimizer
//! (`onnxruntime.transformers.optimizer`, which onnxruntime's docs advise running before
//! `quantize_dynamic`) writes into BERT- and GPT-style models: domain `com.microsoft`, plus
//! `SimplifiedLayerNormalization`, which onnxruntime registers in the ONNX domain. Without
//! them every MatMul after a fused SkipLayerNormalization or BiasGelu reads a value of
//! unknown type and is left float. Output layouts as onnxruntime's ContribOperators.md gives
//! them; what the inputs do not tell stays unknown.

use crate::onnx::tensor_proto::DataType;

use super::super::graph::Node;
use super::{Dim, ValueType, matmul_shape, same_elem, unknown};

/// The outputs of `node` when it is one of these ops, else `None`.
pub(super) fn infer(node: &Node, inputs: &[Option<&ValueType>]) -> Option<Vec<ValueType>> {
    let ms = node.domain() == "com.microsoft";
    let op = node.op_type();
    let input = |i: usize| inputs.get(i).copied().flatten();
    let shape = |i: usize| input(i).and_then(|t| t.shape.clone());
    let x = input(0);
    let attr_i = |name: &str| node.attr::<i64>(name).ok().flatten().unwrap_or(0);
    let float = || ValueType::new(DataType::Float, None);
    let mut outs = match op {
        // Elementwise on input 0 (a bias or skip input is broadcast into it).
        "BiasGelu" | "FastGelu" | "QuickGelu" | "BiasAdd" | "RotaryEmbedding" if ms => {
            vec![same_elem(x, shape(0))]
        }
        // Y, inv_std_var.
        "SimplifiedLayerNormalization" if node.domain().is_empty() => {
            vec![same_elem(x, shape(0)), float()]
        }
        // output, mean, inv_std_var, input_skip_bias_sum.
        "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization" if ms => vec![
            same_elem(x, shape(0)),
            float(),
            float(),
            same_elem(x, shape(0)),
        ],
        "FusedMatMul" if ms => {
            let transposed = ["transA", "transB", "transBatchA", "transBatchB"]
                .iter()
                .any(|a| attr_i(a) != 0);
            let s = if transposed {
                None
            } else {
                matmul_shape(shape(0).as_ref(), shape(1).as_ref())
            };
            vec![same_elem(x, s)]
        }
        // input [B, S, in], weights [in, q + k + v]: output [B, S, v], then present.
        "Attention" if ms => {
            let v_hidden = match node.attr::<Vec<i64>>("qkv_hidden_sizes").ok().flatten() {
                Some(sizes) if sizes.len() == 3 => Dim::Known(sizes[2]),
                _ => shape(1)
                    .and_then(|w| w.get(1).and_then(Dim::known))
                    .filter(|n| n % 3 == 0)
                    .map_or(Dim::Unknown, |n| Dim::Known(n / 3)),
            };
            let s = shape(0)
                .filter(|s| s.len() == 3)
                .map(|s| vec![s[0].clone(), s[1].clone(), v_hidden]);
            vec![same_elem(x, s), same_elem(x, None)]
        }
        // query [B, S, D] -> [B, S, v_hidden]; then present key / value.
        "MultiHeadAttention" | "GroupQueryAttention" if ms => {
            let s = shape(0)
                .filter(|s| s.len() == 3)
                .map(|s| vec![s[0].clone(), s[1].clone(), Dim::Unknown]);
            vec![same_elem(x, s), same_elem(x, None), same_elem(x, None)]
        }
        // input_ids [B, S], ..., word_embedding [V, H]: output [B, S, H], mask_index [B],
        // embedding_sum [B, S, H].
        "EmbedLayerNormalization" if ms => {
            let word = input(2);
            let s = match (shape(0), shape(2)) {
                (Some(ids), Some(w)) if ids.len() == 2 && w.len() == 2 => {
                    Some(vec![ids[0].clone(), ids[1].clone(), w[1].clone()])
                }
                _ => None,
            };
            let batch = shape(0)
                .and_then(|ids| ids.first().cloned())
                .map(|b| vec![b]);
            vec![
                same_elem(word, s.clone()),
                ValueType::new(DataType::Int32, batch),
                same_elem(word, s),
            ]
        }
        _ => return None,
    };
    outs.resize(node.outputs().len(), unknown());
    Some(outs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs::attr_ints;

    fn node(op: &str, domain: &str, n_in: usize, n_out: usize) -> Node {
        let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect();
        Node::new(op, op, domain, names("i", n_in), names("o", n_out))
    }

    fn t(elem: DataType, dims: &[Dim]) -> ValueType {
        ValueType::new(elem, Some(dims.to_vec()))
    }

    fn sym(s: &str) -> Dim {
        Dim::Sym(s.into())
    }

    #[test]
    fn fused_layer_norms_and_gelus_keep_the_input_type() {
        let x = t(DataType::Float, &[sym("b"), sym("s"), Dim::Known(64)]);
        let bias = t(DataType::Float, &[Dim::Known(64)]);
        let skip = node("SkipLayerNormalization", "com.microsoft", 4, 4);
        let outs = infer(&skip, &[Some(&x), Some(&x), Some(&bias), Some(&bias)]).unwrap();
        assert_eq!(outs[0], x);
        assert_eq!(outs[3], x);
        assert_eq!(outs[1].dtype(), DataType::Float);
        let gelu = node("BiasGelu", "com.microsoft", 2, 1);
        assert_eq!(
            infer(&gelu, &[Some(&x), Some(&bias)]).unwrap(),
            vec![x.clone()]
        );
        let simplified = node("SimplifiedLayerNormalization", "", 2, 1);
        assert_eq!(
            infer(&simplified, &[Some(&x), Some(&bias)]).unwrap(),
            vec![x.clone()]
        );
        // The same names in another domain are not these ops.
        assert!(infer(&node("BiasGelu", "", 2, 1), &[Some(&x)]).is_none());
        assert!(
            infer(
                &node("SimplifiedLayerNormalization", "com.microsoft", 1, 1),
                &[Some(&x)]
            )
            .is_none()
        );
    }

    #[test]
    fn attention_output_is_batch_seq_by_v_hidden() {
        let x = t(DataType::Float, &[sym("b"), sym("s"), Dim::Known(64)]);
        let w = t(DataType::Float, &[Dim::Known(64), Dim::Known(192)]);
        let att = node("Attention", "com.microsoft", 4, 2);
        let outs = infer(&att, &[Some(&x), Some(&w)]).unwrap();
        assert_eq!(
            outs[0],
            t(DataType::Float, &[sym("b"), sym("s"), Dim::Known(64)])
        );
        let sized = node("Attention", "com.microsoft", 4, 1)
            .with_attr(attr_ints("qkv_hidden_sizes", vec![64, 64, 32]));
        let outs = infer(&sized, &[Some(&x), Some(&w)]).unwrap();
        assert_eq!(outs[0].shape.as_ref().unwrap()[2], Dim::Known(32));
        let mha = node("MultiHeadAttention", "com.microsoft", 3, 1);
        let outs = infer(&mha, &[Some(&x), Some(&x), Some(&x)]).unwrap();
        assert_eq!(outs[0].dtype(), DataType::Float);
        assert_eq!(outs[0].shape.as_ref().unwrap().len(), 3);
    }

    #[test]
    fn embed_layer_norm_takes_batch_and_seq_from_the_ids() {
        let ids = t(DataType::Int32, &[sym("b"), sym("s")]);
        let word = t(DataType::Float, &[Dim::Known(1000), Dim::Known(64)]);
        let e = node("EmbedLayerNormalization", "com.microsoft", 8, 3);
        let outs = infer(&e, &[Some(&ids), Some(&ids), Some(&word)]).unwrap();
        let hidden = t(DataType::Float, &[sym("b"), sym("s"), Dim::Known(64)]);
        assert_eq!(
            outs,
            vec![hidden.clone(), t(DataType::Int32, &[sym("b")]), hidden]
        );
    }

    #[test]
    fn fused_matmul_shape_only_without_transposes() {
        let a = t(DataType::Float, &[sym("b"), Dim::Known(8), Dim::Known(64)]);
        let b = t(DataType::Float, &[sym("b"), Dim::Known(64), Dim::Known(8)]);
        let plain = node("FusedMatMul", "com.microsoft", 2, 1);
        assert_eq!(
            infer(&plain, &[Some(&a), Some(&b)]).unwrap()[0],
            t(DataType::Float, &[sym("b"), Dim::Known(8), Dim::Known(8)])
        );
        let trans = node("FusedMatMul", "com.microsoft", 2, 1)
            .with_attr(crate::ir::attrs::attr_int("transB", 1));
        let outs = infer(&trans, &[Some(&a), Some(&b)]).unwrap();
        assert_eq!(outs[0], ValueType::new(DataType::Float, None));
    }
}
