//! The nodes around an integer product that the MatMul, Gemm and Conv rewrites share:
//! `DynamicQuantizeLinear` of the float activation in front, and `Cast` to float times
//! `a_scale * w_scale` behind (the pattern onnxruntime fuses into DynamicQuantizeMatMul).

use crate::ir::attrs::attr_int;
use crate::ir::{NameGen, Node};
use crate::onnx::tensor_proto::DataType;

use super::rewrite::Replacement;

/// The uint8 activation, its scale and zero point.
pub struct QuantizedInput {
    pub q: String,
    pub scale: String,
    pub zero_point: String,
}

/// Appends `DynamicQuantizeLinear(x)`.
pub fn dynamic_quantize(
    out: &mut Replacement,
    names: &mut NameGen,
    stem: &str,
    x: &str,
) -> QuantizedInput {
    let qi = QuantizedInput {
        q: names.fresh(&format!("{x}_quantized")),
        scale: names.fresh(&format!("{x}_scale")),
        zero_point: names.fresh(&format!("{x}_zero_point")),
    };
    out.nodes.push(Node::new(
        names.fresh(&format!("{stem}_quant")),
        "DynamicQuantizeLinear",
        "",
        vec![x.to_string()],
        vec![qi.q.clone(), qi.scale.clone(), qi.zero_point.clone()],
    ));
    qi
}

/// Appends `Cast(int_out -> float)` and `Mul(a_scale, w_scale)`; returns the float product
/// and the combined scale, which the caller multiplies (and biases) into its output.
pub fn rescale(
    out: &mut Replacement,
    names: &mut NameGen,
    stem: &str,
    y: &str,
    int_out: String,
    a_scale: String,
    w_scale: String,
) -> (String, String) {
    let cast_out = names.fresh(&format!("{y}_float"));
    out.nodes.push(
        Node::new(
            names.fresh(&format!("{stem}_cast")),
            "Cast",
            "",
            vec![int_out],
            vec![cast_out.clone()],
        )
        .with_attr(attr_int("to", DataType::Float as i64)),
    );
    let scale = names.fresh(&format!("{y}_scale"));
    out.nodes.push(Node::new(
        names.fresh(&format!("{stem}_scale_mul")),
        "Mul",
        "",
        vec![a_scale, w_scale],
        vec![scale.clone()],
    ));
    (cast_out, scale)
}
