//! `--activations auto` (the default): per-token activation scales for the MatMul/Gemm nodes of
//! transformers, one per-tensor scale everywhere else, decided per node from the graph alone.
//!
//! The rule, and the measurements behind it (BENCHMARKS.md, "Choosing the activation mode",
//! `scripts/bench_accuracy.py`, onnxruntime 1.32, an AVX2 CPU without VNNI):
//! - **Per-token where the graph holds self-attention**: a Softmax over the product of two
//!   computed tensors (Q·Kᵀ, through the scaling, masking and reshaping in between), or an
//!   attention op (ONNX `Attention`, com.microsoft `Attention`, `MultiHeadAttention`,
//!   `GroupQueryAttention`). The rows of every MatMul/Gemm activation there are tokens, and
//!   trained transformers carry outlier tokens and outlier channels (after GELU, in the
//!   residual stream), which one scale for the whole activation spreads over every token: on
//!   all-MiniLM-L6-v2 the valid tokens' cosine goes from 0.9907 (per-tensor, the same uint8
//!   per-channel weights) to 0.9988, the pooled embeddings' from 0.985 to 0.9975, for 15% more
//!   time in onnxruntime (the per-row chain is not one fused kernel there).
//! - **Per-tensor elsewhere** (LSTM language models, MLPs, convolution heads): their
//!   activations have no such token outliers (an LSTM's output is bounded by its tanh), and
//!   per-tensor keeps onnxruntime's fused `DynamicQuantizeMatMul`. On the word LM fixture
//!   per-token changes top-1 agreement by 0.004% and costs 47% more time in onnxruntime.
//! - **Never per-token with full-range int8 weights**: onnxruntime on x86 CPUs without VNNI
//!   multiplies uint8 x int8 with `vpmaddubsw`, whose int16 pair sums saturate; per-token rows
//!   use the whole uint8 range, so on MiniLM that form falls to 0.956 (and to 66% top-1 on the
//!   GPT-2 fixture). With uint8 weights (the default for MatMul/Gemm) or `--reduce-range` the
//!   products are exact on every CPU, so per-token is safe; with `--weight-type int8` `auto`
//!   stays per-tensor and says why.
//! - **Per-tensor for small Linears**: where the weight is narrower than
//!   [`PER_TOKEN_MIN_DIM`] in either dimension, the per-row chain (two dozen unfused
//!   elementwise nodes in onnxruntime) costs more than the int8 product saves: six layers of
//!   128-wide Linears (128 -> 512 -> 128) ran at 0.63-0.84x float per-token and 1.26-1.34x
//!   per-tensor in onnxruntime, 192-wide ones at 1.02x per-token, 256-wide at 1.12x and 1.44x,
//!   384-wide at 1.24x and 1.48x (BENCHMARKS.md, "Per-token cost by layer width"). A rewrite
//!   should never make a model slower.
//! - Per-token needs opset 13; below it, per-tensor.
//!
//! Subgraphs (If/Loop/Scan bodies) are judged on their own nodes.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::ir::{Graph, Node};

use super::per_token;
use super::rewrite::ActivationQuant;
use super::weights::{WeightQuantOptions, WeightType};

/// The activation mode a MatMul/Gemm got, and why.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActivationChoice {
    pub mode: ActivationQuant,
    pub why: String,
}

/// Ops between the attention scores' MatMul and their Softmax (scaling, masking, casts,
/// reshapes) that [`has_attention`] looks through.
const SCORE_PATH_OPS: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Where",
    "Cast",
    "Reshape",
    "Transpose",
    "Max",
    "Min",
    "Clip",
    "Expand",
    "Squeeze",
    "Unsqueeze",
    "Identity",
];

/// How many nodes back from a Softmax the scores' MatMul may be.
const SCORE_PATH_DEPTH: usize = 8;

/// Whether `g` (its own nodes, not its subgraphs) computes self-attention: an attention op,
/// or a Softmax whose input comes, through [`SCORE_PATH_OPS`], from a MatMul (or Einsum) of
/// two computed tensors. `constant` says whether a value is a constant (initializers, also of
/// enclosing graphs, and Constant outputs).
pub fn has_attention(g: &Graph, constant: &dyn Fn(&str) -> bool) -> bool {
    let attention_op = |n: &Node| match n.domain() {
        "" | "ai.onnx" => n.op_type() == "Attention",
        "com.microsoft" => matches!(
            n.op_type(),
            "Attention" | "MultiHeadAttention" | "GroupQueryAttention" | "QAttention"
        ),
        _ => false,
    };
    if g.nodes.iter().any(attention_op) {
        return true;
    }
    let producer: HashMap<&str, &Node> = g
        .nodes
        .iter()
        .flat_map(|n| n.outputs().iter().map(move |o| (o.as_str(), n)))
        .collect();
    let computed = |v: &str| !v.is_empty() && !constant(v);
    let scores = |n: &Node| {
        matches!(n.op_type(), "MatMul" | "Einsum")
            && n.domain().is_empty()
            && n.inputs().len() >= 2
            && n.inputs().iter().all(|i| computed(i))
    };
    g.nodes
        .iter()
        .filter(|n| n.op_type() == "Softmax" && n.domain().is_empty())
        .any(|softmax| {
            let mut frontier: Vec<&str> = softmax
                .inputs()
                .iter()
                .take(1)
                .map(|s| s.as_str())
                .collect();
            let mut seen: HashSet<&str> = HashSet::new();
            for _ in 0..SCORE_PATH_DEPTH {
                let mut next = Vec::new();
                for v in frontier {
                    if !seen.insert(v) {
                        continue;
                    }
                    let Some(p) = producer.get(v) else { continue };
                    if scores(p) {
                        return true;
                    }
                    if p.domain().is_empty() && SCORE_PATH_OPS.contains(&p.op_type()) {
                        next.extend(
                            p.inputs()
                                .iter()
                                .filter(|i| computed(i))
                                .map(|s| s.as_str()),
                        );
                    }
                }
                frontier = next;
            }
            false
        })
}

/// The narrowest weight (in either dimension) `auto` gives per-token activations.
pub const PER_TOKEN_MIN_DIM: usize = 256;

/// Whether a `[k, n]` weight is wide enough for the per-row chain to pay for itself.
pub fn per_token_pays(k: usize, n: usize) -> bool {
    k.min(n) >= PER_TOKEN_MIN_DIM
}

/// The mode `auto` gives a MatMul/Gemm of a graph with (`attention`) or without self-attention,
/// whose weights (`weight_dims`, when known) are quantized as `weights`, in a model of
/// default-domain opset `opset`.
pub fn choose_auto(
    attention: bool,
    weights: &WeightQuantOptions,
    weight_dims: Option<(usize, usize)>,
    opset: i64,
) -> ActivationChoice {
    let per_tensor = |why: &str| ActivationChoice {
        mode: ActivationQuant::PerTensor,
        why: format!("auto: {why}"),
    };
    if !attention {
        return per_tensor(
            "no self-attention in this graph, so no outlier tokens for per-token scales to isolate",
        );
    }
    if opset < per_token::MIN_OPSET {
        return per_tensor(&format!(
            "in a transformer, but per-token needs opset {} (the model has {opset})",
            per_token::MIN_OPSET
        ));
    }
    if weights.weight_type == WeightType::Int8 && !weights.reduce_range {
        return per_tensor(
            "in a transformer, but with full-range int8 weights per-token rows saturate \
             onnxruntime's uint8 x int8 products on CPUs without VNNI (use uint8 weights or \
             --reduce-range for per-token)",
        );
    }
    if let Some((k, n)) = weight_dims
        && !per_token_pays(k, n)
    {
        return per_tensor(&format!(
            "in a transformer, but the weight ({k}x{n}) is narrower than {PER_TOKEN_MIN_DIM}: \
             there the per-row chain costs onnxruntime more than the int8 product saves"
        ));
    }
    ActivationChoice {
        mode: ActivationQuant::PerToken,
        why: "auto: the graph has self-attention, so the rows are tokens, whose outliers a \
              per-tensor scale would spread over all of them"
            .into(),
    }
}

/// The mode a MatMul/Gemm gets under `requested` (`Auto` resolved by [`choose_auto`]).
pub fn resolve(
    requested: ActivationQuant,
    attention: bool,
    weights: &WeightQuantOptions,
    weight_dims: Option<(usize, usize)>,
    opset: i64,
) -> ActivationChoice {
    match requested {
        ActivationQuant::Auto => choose_auto(attention, weights, weight_dims, opset),
        ActivationQuant::PerToken if opset < per_token::MIN_OPSET => ActivationChoice {
            mode: ActivationQuant::PerTensor,
            why: format!(
                "per-token needs opset {} (the model has {opset})",
                per_token::MIN_OPSET
            ),
        },
        mode => ActivationChoice {
            mode,
            why: "as requested".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;

    fn node(op: &str, inputs: &[&str], output: &str) -> Node {
        Node::new(
            output.to_string(),
            op,
            "",
            inputs.iter().map(|s| s.to_string()).collect(),
            vec![output.to_string()],
        )
    }

    fn graph(nodes: Vec<Node>) -> Graph {
        Graph {
            nodes,
            ..Default::default()
        }
    }

    #[test]
    fn softmax_over_scores_of_two_computed_tensors_is_attention() {
        let consts = |v: &str| v.starts_with('W') || v == "scale";
        let attention = graph(vec![
            node("MatMul", &["x", "Wq"], "q"),
            node("MatMul", &["x", "Wk"], "k"),
            node("Transpose", &["k"], "kt"),
            node("MatMul", &["q", "kt"], "scores"),
            node("Div", &["scores", "scale"], "scaled"),
            node("Add", &["scaled", "mask"], "masked"),
            node("Softmax", &["masked"], "probs"),
        ]);
        assert!(has_attention(&attention, &consts));
        // A classifier's Softmax over a product with a weight is not attention.
        let classifier = graph(vec![
            node("MatMul", &["x", "W1"], "h"),
            node("Add", &["h", "Wb"], "logits"),
            node("Softmax", &["logits"], "p"),
        ]);
        assert!(!has_attention(&classifier, &consts));
        assert!(!has_attention(
            &graph(vec![node("MatMul", &["x", "W1"], "h")]),
            &consts
        ));
    }

    #[test]
    fn auto_is_per_token_only_where_safe() {
        let u8w = WeightQuantOptions {
            weight_type: WeightType::Uint8,
            symmetric: false,
            reduce_range: false,
        };
        let i8w = WeightQuantOptions::default();
        let rr = WeightQuantOptions {
            reduce_range: true,
            ..i8w
        };
        let wide = Some((384, 1536));
        assert_eq!(
            choose_auto(true, &u8w, wide, 17).mode,
            ActivationQuant::PerToken
        );
        assert_eq!(
            choose_auto(true, &u8w, None, 17).mode,
            ActivationQuant::PerToken
        );
        assert_eq!(
            choose_auto(true, &rr, wide, 17).mode,
            ActivationQuant::PerToken
        );
        assert_eq!(
            choose_auto(true, &i8w, wide, 17).mode,
            ActivationQuant::PerTensor
        );
        assert_eq!(
            choose_auto(true, &u8w, wide, 12).mode,
            ActivationQuant::PerTensor
        );
        assert_eq!(
            choose_auto(false, &u8w, wide, 17).mode,
            ActivationQuant::PerTensor
        );
        // Narrower than PER_TOKEN_MIN_DIM in either dimension: per-tensor, saying why.
        for narrow in [(128, 512), (1536, 255), (384, 2)] {
            let c = choose_auto(true, &u8w, Some(narrow), 17);
            assert_eq!(c.mode, ActivationQuant::PerTensor, "{narrow:?}");
            assert!(c.why.contains("narrower than 256"), "{}", c.why);
        }
        assert_eq!(
            choose_auto(true, &u8w, Some((256, 256)), 17).mode,
            ActivationQuant::PerToken
        );
        let forced = resolve(ActivationQuant::PerToken, false, &i8w, Some((2, 2)), 17);
        assert_eq!(forced.mode, ActivationQuant::PerToken);
    }
}
