//! Running a model in tract-onnx (feature `tract`), shared by the tract cross-check tests.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use onnx_dynq::runtime::Value;
use tract_onnx::prelude::*;

pub fn to_tract(v: &Value) -> Tensor {
    match v {
        Value::F32(a) => a.clone().into(),
        Value::F16(a) => a.clone().into(),
        Value::F64(a) => a.clone().into(),
        Value::I64(a) => a.clone().into(),
        Value::I32(a) => a.clone().into(),
        Value::I8(a) => a.clone().into(),
        Value::U8(a) => a.clone().into(),
        Value::Bool(a) => a.clone().into(),
        Value::I16(a) => a.clone().into(),
        Value::U16(a) => a.clone().into(),
        Value::U32(a) => a.clone().into(),
        Value::U64(a) => a.clone().into(),
        Value::BF16(_) => panic!("tract has no bfloat16 tensors"),
    }
}

pub fn from_tract(t: &Tensor) -> TractResult<Value> {
    Ok(match t.datum_type() {
        DatumType::F32 => Value::F32(t.to_plain_array_view::<f32>()?.to_owned()),
        DatumType::F16 => Value::F16(t.to_plain_array_view::<f16>()?.to_owned()),
        DatumType::F64 => Value::F64(t.to_plain_array_view::<f64>()?.to_owned()),
        DatumType::I64 => Value::I64(t.to_plain_array_view::<i64>()?.to_owned()),
        DatumType::I32 => Value::I32(t.to_plain_array_view::<i32>()?.to_owned()),
        DatumType::I8 => Value::I8(t.to_plain_array_view::<i8>()?.to_owned()),
        DatumType::U8 => Value::U8(t.to_plain_array_view::<u8>()?.to_owned()),
        DatumType::Bool => Value::Bool(t.to_plain_array_view::<bool>()?.to_owned()),
        DatumType::I16 => Value::I16(t.to_plain_array_view::<i16>()?.to_owned()),
        DatumType::U16 => Value::U16(t.to_plain_array_view::<u16>()?.to_owned()),
        DatumType::U32 => Value::U32(t.to_plain_array_view::<u32>()?.to_owned()),
        DatumType::U64 => Value::U64(t.to_plain_array_view::<u64>()?.to_owned()),
        dt => anyhow::bail!("tract output of type {dt:?}"),
    })
}

/// Loads, pins input facts to the feeds, optimizes and runs the model in tract.
pub fn run_tract(path: &Path, feeds: &HashMap<String, Value>) -> TractResult<Vec<Value>> {
    // The exporters declare intermediate and output shapes with the symbolic batch dim; once
    // the inputs are pinned those declarations contradict tract's inference ("cannot unify
    // Sym(batch) with Val(2)"), so they are dropped and tract infers every shape itself.
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_path(path)?;
    if let Some(g) = proto.graph.as_mut() {
        g.value_info.clear();
    }
    let dir = path.parent().and_then(|d| d.to_str());
    let mut model = onnx.parse(&proto, dir)?.model;
    for ix in 0..model.output_outlets()?.len() {
        model.set_output_fact(ix, InferenceFact::default())?;
    }
    let mut inputs = TVec::new();
    for (ix, outlet) in model.input_outlets()?.to_vec().into_iter().enumerate() {
        let name = model.node(outlet.node).name.clone();
        let v = feeds
            .get(&name)
            .ok_or_else(|| anyhow::anyhow!("no sample for tract input '{name}'"))?;
        let t = to_tract(v);
        model.set_input_fact(ix, InferenceFact::dt_shape_from_tensor(&t))?;
        inputs.push(t.into_tvalue());
    }
    let plan = model.into_optimized()?.into_runnable()?;
    plan.run(inputs)?.iter().map(|t| from_tract(t)).collect()
}

/// [`run_tract`] with tract's panics turned into errors.
pub fn run_tract_caught(path: &Path, feeds: &HashMap<String, Value>) -> Result<Vec<Value>, String> {
    match catch_unwind(AssertUnwindSafe(|| run_tract(path, feeds))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(p) => Err(format!(
            "panic: {}",
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        )),
    }
}
