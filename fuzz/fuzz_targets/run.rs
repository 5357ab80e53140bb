//! A model that loads is planned and run in the built-in runtime on small inputs of its
//! declared types (symbolic dims 2) under a 64 MiB memory budget: an error is fine, a panic,
//! an abort or an allocation failure is not.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use ndarray::{ArrayD, IxDyn};
use onnx_dynq::ir::shape::Dim;
use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::{Options, Session, Value};

/// Inputs larger than this are not fed (the run is skipped).
const MAX_INPUT_ELEMS: usize = 1 << 16;

fn input(dt: DataType, shape: &[usize], seed: usize) -> Option<Value> {
    let n: usize = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    if n > MAX_INPUT_ELEMS {
        return None;
    }
    // Small values of both signs; ints stay in 0..3 so that they index small tables.
    let f = |i: usize| ((i * 7 + seed) % 11) as f32 * 0.25 - 1.25;
    let k = |i: usize| ((i + seed) % 3) as i64;
    let sh = IxDyn(shape);
    Some(match dt {
        DataType::Float => Value::F32(ArrayD::from_shape_vec(sh, (0..n).map(f).collect()).ok()?),
        DataType::Double => {
            Value::F64(ArrayD::from_shape_vec(sh, (0..n).map(|i| f(i) as f64).collect()).ok()?)
        }
        DataType::Float16 => Value::F16(
            ArrayD::from_shape_vec(sh, (0..n).map(|i| half::f16::from_f32(f(i))).collect()).ok()?,
        ),
        DataType::Int64 => Value::I64(ArrayD::from_shape_vec(sh, (0..n).map(k).collect()).ok()?),
        DataType::Int32 => {
            Value::I32(ArrayD::from_shape_vec(sh, (0..n).map(|i| k(i) as i32).collect()).ok()?)
        }
        DataType::Int8 => {
            Value::I8(ArrayD::from_shape_vec(sh, (0..n).map(|i| k(i) as i8).collect()).ok()?)
        }
        DataType::Uint8 => {
            Value::U8(ArrayD::from_shape_vec(sh, (0..n).map(|i| k(i) as u8).collect()).ok()?)
        }
        DataType::Bool => {
            Value::Bool(ArrayD::from_shape_vec(sh, (0..n).map(|i| k(i) == 1).collect()).ok()?)
        }
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(model) = onnx_dynq::model::load_bytes(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let options = Options {
        threads: 1,
        max_memory: Some(64 << 20),
        ..Default::default()
    };
    let Ok(session) = Session::new(&model, &options) else {
        return;
    };
    let mut feed = HashMap::new();
    for (seed, info) in session.inputs().enumerate() {
        let Some(ty) = &info.ty else { return };
        let Some(dims) = &ty.shape else { return };
        let shape: Vec<usize> = dims
            .iter()
            .map(|d| match d {
                Dim::Known(k) => (*k).max(0) as usize,
                _ => 2,
            })
            .collect();
        let Some(v) = input(ty.dtype(), &shape, seed) else {
            return;
        };
        feed.insert(info.name.clone(), v);
    }
    let _ = session.run(feed);
});
