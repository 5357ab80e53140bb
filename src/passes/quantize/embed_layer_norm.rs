//! com.microsoft `EmbedLayerNormalization` (the embeddings and first layer norm of a BERT
//! encoder, fused by onnxruntime's transformer optimizer) becomes com.microsoft
//! `QEmbedLayerNormalization`, as onnxruntime's `quantize_dynamic` makes it: the word,
//! position and segment tables and gamma and beta stored as uint8, each with one asymmetric
//! scale and zero point (the op has no per-row form), dequantized inside the op:
//!
//! ```text
//! QEmbedLayerNormalization(input_ids, segment_ids, word_q, position_q, segment_q, gamma_q,
//!     beta_q, mask, word_scale, position_scale, segment_scale, gamma_scale, beta_scale,
//!     word_zp, position_zp, segment_zp, gamma_zp, beta_zp) ─▶ output, mask_index
//! ```
//!
//! The embedding tables are most of such a model's weights outside the Linears, so this is
//! what brings an optimized BERT to a quarter of its size. The model already needs
//! onnxruntime (or the built-in runtime) for `EmbedLayerNormalization`. Only what
//! `QEmbedLayerNormalization` can express is taken: the policy leaves float a node with
//! `position_ids`, a used `embedding_sum` output or attributes other than `epsilon`.

use super::rewrite::{NodeCtx, Replacement, RewriteResult, Skip, attribute_outside};
use super::weights::{WeightQuantOptions, WeightSrc, WeightType, quantize_weight};
use crate::ir::Node;
use crate::onnx::tensor_proto::DataType;

/// The float tables, by input index: word, position, segment, gamma, beta.
const TABLES: [(usize, &str); 5] = [
    (2, "word_embedding"),
    (3, "position_embedding"),
    (4, "segment_embedding"),
    (5, "gamma"),
    (6, "beta"),
];

/// Why `node` has no `QEmbedLayerNormalization` form, if it has none.
pub fn unsupported(node: &Node) -> Option<String> {
    if let Some(a) = attribute_outside(node, &["epsilon"]) {
        return Some(format!(
            "attribute '{a}' has no QEmbedLayerNormalization form"
        ));
    }
    if node.input(8).is_some() {
        return Some("position_ids has no QEmbedLayerNormalization form".into());
    }
    node.outputs()
        .get(2)
        .is_some_and(|o| !o.is_empty())
        .then(|| "the embedding_sum output has no QEmbedLayerNormalization form".into())
}

pub fn rewrite_embed_layer_norm(node: &Node, ctx: &mut NodeCtx) -> RewriteResult {
    if let Some(why) = unsupported(node) {
        return Err(Skip(why));
    }
    let opts = WeightQuantOptions {
        weight_type: WeightType::Uint8,
        symmetric: false,
        reduce_range: false,
    };
    let names = &mut *ctx.names;
    let mut out = Replacement::default();
    // Inputs 2-6 (tables), 8-12 (scales), 13-17 (zero points); "" where a table is absent.
    let mut inputs = vec![String::new(); 18];
    for i in [0, 1, 7] {
        inputs[i] = node.input(i).unwrap_or("").to_string();
    }
    for (k, (i, what)) in TABLES.iter().enumerate() {
        let Some(name) = node.input(*i) else {
            if *i == 4 {
                continue; // the segment table is optional
            }
            return Err(Skip(format!("has no {what}")));
        };
        let t = (ctx.constants)(name)
            .ok_or_else(|| Skip(format!("{what} '{name}' is not a constant")))?;
        if t.data_type().ok() != Some(DataType::Float) {
            return Err(Skip(format!("{what} '{name}' is not float32")));
        }
        let src = WeightSrc::from_tensor(t).map_err(|e| Skip(e.to_string()))?;
        let [vq, scale, zp] = quantize_weight(src, None, &opts).push_initializers(
            &mut out.initializers,
            names,
            name,
            &[],
        );
        inputs[*i] = vq;
        inputs[8 + k] = scale;
        inputs[13 + k] = zp;
    }
    let outputs: Vec<String> = node.outputs().iter().take(2).cloned().collect();
    let mut q = Node::new(
        node.name().to_string(),
        "QEmbedLayerNormalization",
        "com.microsoft",
        inputs,
        outputs,
    );
    for a in &node.proto.attribute {
        q = q.with_attr(a.clone());
    }
    out.nodes.push(q);
    out.opsets.push(("com.microsoft".into(), 1));
    out.note = "QEmbedLayerNormalization (com.microsoft), uint8 tables with one scale each".into();
    Ok(out)
}
