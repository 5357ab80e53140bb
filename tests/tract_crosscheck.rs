//! The built-in runtime against tract-onnx on every fixture tract can run (feature `tract`).
//!
//! Each fixture's sample inputs feed both engines; tract's input facts are pinned to the
//! sample's types and shapes (tract panics on an LSTM whose batch dim is symbolic). Outputs
//! match within `tol * max(1, max |tract|)`, tol 1e-4 for float32 and 1e-2 for float16 (see
//! `fixture_io::tolerance`).
//!
//! Fixtures tract cannot run are listed in [`TRACT_CANNOT_RUN`] with the reason; the test
//! fails when a listed fixture starts running (so the list stays honest) or an unlisted one
//! fails in tract.

#![cfg(feature = "tract")]

mod common;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::fixture_io::{self, compare, stem, tolerance};
use onnx_dynq::runtime::{Options, Session, Value};
use tract_onnx::prelude::*;

/// Fixtures tract-onnx 0.23.9 cannot run: (fixture, text tract's error contains, why).
const TRACT_CANNOT_RUN: &[(&str, &str, &str)] = &[(
    "mlp_fp16",
    "Output mismatch after rewiring expansion",
    "tract's Gemm expansion computes a float16 Gemm in float32 and rejects its own rewrite",
)];

fn to_tract(v: &Value) -> Tensor {
    match v {
        Value::F32(a) => a.clone().into(),
        Value::F16(a) => a.clone().into(),
        Value::F64(a) => a.clone().into(),
        Value::I64(a) => a.clone().into(),
        Value::I32(a) => a.clone().into(),
        Value::I8(a) => a.clone().into(),
        Value::U8(a) => a.clone().into(),
        Value::Bool(a) => a.clone().into(),
    }
}

fn from_tract(t: &Tensor) -> TractResult<Value> {
    Ok(match t.datum_type() {
        DatumType::F32 => Value::F32(t.to_plain_array_view::<f32>()?.to_owned()),
        DatumType::F16 => Value::F16(t.to_plain_array_view::<f16>()?.to_owned()),
        DatumType::F64 => Value::F64(t.to_plain_array_view::<f64>()?.to_owned()),
        DatumType::I64 => Value::I64(t.to_plain_array_view::<i64>()?.to_owned()),
        DatumType::I32 => Value::I32(t.to_plain_array_view::<i32>()?.to_owned()),
        DatumType::I8 => Value::I8(t.to_plain_array_view::<i8>()?.to_owned()),
        DatumType::U8 => Value::U8(t.to_plain_array_view::<u8>()?.to_owned()),
        DatumType::Bool => Value::Bool(t.to_plain_array_view::<bool>()?.to_owned()),
        dt => anyhow::bail!("tract output of type {dt:?}"),
    })
}

/// Loads, pins input facts to the feeds, optimizes and runs the model in tract.
fn run_tract(path: &Path, feeds: &HashMap<String, Value>) -> TractResult<Vec<Value>> {
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
fn run_tract_caught(path: &Path, feeds: &HashMap<String, Value>) -> Result<Vec<Value>, String> {
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

#[test]
fn every_fixture_tract_runs_matches_the_runtime() {
    let mut fails = Vec::new();
    let mut cannot: Vec<(String, String)> = Vec::new();
    for path in common::fixture_models() {
        let fixture = stem(&path);
        let sample = fixture_io::sample(&path, false);
        let model = onnx_dynq::load(&path).unwrap();
        let session = Session::new(&model, &Options::with_threads(1)).unwrap();
        let feeds = fixture_io::feeds(&session, &sample);
        let ours = session
            .run(feeds.clone())
            .unwrap_or_else(|e| panic!("{fixture}: runtime failed: {e}"));
        let theirs = match run_tract_caught(&path, &feeds) {
            Ok(t) => t,
            Err(e) => {
                println!("{fixture:<16} tract cannot run it: {e}");
                cannot.push((fixture, e));
                continue;
            }
        };
        if theirs.len() != ours.len() {
            fails.push(format!(
                "{fixture}: tract gave {} outputs, the runtime {}",
                theirs.len(),
                ours.len()
            ));
            continue;
        }
        for ((name, got), want) in ours.iter().zip(&theirs) {
            let d = compare(got, want, tolerance(got));
            let ok = d.ok() && got.dtype() == want.dtype();
            println!(
                "{fixture:<16} {name:<8} vs tract  max|diff| {:.3e}  limit {:.3e}  {:?} {:?}  {}",
                d.max_abs,
                d.limit,
                got.shape(),
                got.dtype(),
                if ok { "PASS" } else { "FAIL" }
            );
            if !ok {
                fails.push(format!(
                    "{fixture}/{name} vs tract: max|diff| {:.3e} > limit {:.3e} (shapes {:?} vs {:?}, types {:?} vs {:?})",
                    d.max_abs,
                    d.limit,
                    got.shape(),
                    want.shape(),
                    got.dtype(),
                    want.dtype()
                ));
            }
        }
    }
    // The fixtures tract cannot run are exactly the listed ones, for the listed reasons.
    let mut got: Vec<&str> = cannot.iter().map(|(f, _)| f.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = TRACT_CANNOT_RUN.iter().map(|(f, _, _)| *f).collect();
    want.sort();
    if got != want {
        fails.push(format!(
            "fixtures tract cannot run: {got:?}, expected {want:?}; errors: {cannot:#?}"
        ));
    }
    for (f, err) in &cannot {
        if let Some((_, needle, why)) = TRACT_CANNOT_RUN.iter().find(|(n, _, _)| n == f)
            && !err.contains(needle)
        {
            fails.push(format!(
                "{f}: expected tract to fail with '{needle}' ({why}), it failed with: {err}"
            ));
        }
    }
    assert!(
        fails.is_empty(),
        "{} failure(s):\n{}",
        fails.len(),
        fails.join("\n")
    );
}
