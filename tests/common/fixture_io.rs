//! Fixture samples as runtime values, and the output comparison the cross-checks share.
//!
//! ndarray-npy cannot read float16 arrays, so a Python step rewrites a fixture's npz with
//! float16 arrays widened to float32 (exact), and optionally adds onnxruntime's outputs for
//! the same inputs. Keys in the rewritten npz: `input.<name>`, `torch.<name>` (the fixture's
//! `output.<name>`), `ort.<name>`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use half::f16;
use ndarray::{ArrayD, IxDyn, OwnedRepr};
use ndarray_npy::{NpzReader, ReadableElement};

use onnx_dynq::onnx::tensor_proto::DataType;
use onnx_dynq::runtime::{Session, Value};

const REWRITE: &str = r#"
import sys, numpy as np
model, npz, out, with_ort = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
data = np.load(npz)
def widen(a):
    return a.astype(np.float32) if a.dtype == np.float16 else a
res = {}
for k in data.files:
    if k.startswith("input."):
        res[k] = widen(data[k])
    elif k.startswith("output."):
        res["torch." + k[len("output."):]] = widen(data[k])
if with_ort:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
    names = [o.name for o in s.get_outputs()]
    for n, v in zip(names, s.run(None, feeds)):
        res["ort." + n] = widen(v)
np.savez(out, **res)
print("ok")
"#;

/// A fixture's sample: inputs, torch's outputs and (when asked) onnxruntime's outputs.
pub struct Sample {
    pub inputs: BTreeMap<String, Value>,
    pub torch: BTreeMap<String, Value>,
    pub ort: BTreeMap<String, Value>,
}

/// Reads `model`'s sample (`model` with extension npz); `with_ort` also runs onnxruntime.
pub fn sample(model: &Path, with_ort: bool) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample.npz");
    let flag = Path::new(if with_ort { "1" } else { "0" });
    super::run_python(REWRITE, &[model, &model.with_extension("npz"), &out, flag]);
    let mut s = Sample {
        inputs: BTreeMap::new(),
        torch: BTreeMap::new(),
        ort: BTreeMap::new(),
    };
    for (k, v) in read_npz(&out) {
        let (kind, name) = k.split_once('.').expect("rewritten npz key");
        let map = match kind {
            "input" => &mut s.inputs,
            "torch" => &mut s.torch,
            "ort" => &mut s.ort,
            _ => panic!("unexpected key {k}"),
        };
        map.insert(name.to_string(), v);
    }
    assert!(
        !s.inputs.is_empty(),
        "{}: no inputs in its npz",
        model.display()
    );
    assert!(
        !s.torch.is_empty(),
        "{}: no outputs in its npz",
        model.display()
    );
    s
}

fn try_read<T: ReadableElement>(r: &mut NpzReader<std::fs::File>, name: &str) -> Option<ArrayD<T>> {
    r.by_name::<OwnedRepr<T>, IxDyn>(name).ok()
}

/// Every array of an npz, whatever its element type.
pub fn read_npz(path: &Path) -> Vec<(String, Value)> {
    let mut r = NpzReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let names = r.names().unwrap();
    names
        .into_iter()
        .map(|n| {
            let v = if let Some(a) = try_read::<f32>(&mut r, &n) {
                Value::F32(a)
            } else if let Some(a) = try_read::<i64>(&mut r, &n) {
                Value::I64(a)
            } else if let Some(a) = try_read::<f64>(&mut r, &n) {
                Value::F64(a)
            } else if let Some(a) = try_read::<i32>(&mut r, &n) {
                Value::I32(a)
            } else if let Some(a) = try_read::<bool>(&mut r, &n) {
                Value::Bool(a)
            } else if let Some(a) = try_read::<u8>(&mut r, &n) {
                Value::U8(a)
            } else if let Some(a) = try_read::<i8>(&mut r, &n) {
                Value::I8(a)
            } else {
                panic!(
                    "{}: array '{n}' has an unreadable element type",
                    path.display()
                )
            };
            (n, v)
        })
        .collect()
}

/// An npz sample in the fixtures' layout split into its `input.<name>` arrays (the feeds)
/// and its `output.<name>` arrays (the expected outputs), keyed by name.
pub fn split_sample(data: &[(String, Value)]) -> (HashMap<String, Value>, HashMap<String, Value>) {
    let part = |prefix: &str| -> HashMap<String, Value> {
        data.iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
            .collect()
    };
    (part("input."), part("output."))
}

/// The session's feeds from a sample, narrowed back to float16 where the model declares it.
pub fn feeds(session: &Session, sample: &Sample) -> HashMap<String, Value> {
    session
        .inputs()
        .map(|info| {
            let v = sample
                .inputs
                .get(&info.name)
                .unwrap_or_else(|| panic!("sample has no input '{}'", info.name))
                .clone();
            let want = info.ty.as_ref().map(|t| t.dtype());
            let v = match (want, v) {
                (Some(DataType::Float16), Value::F32(a)) => Value::F16(a.mapv(f16::from_f32)),
                (_, v) => v,
            };
            (info.name.clone(), v)
        })
        .collect()
}

pub fn to_f64(v: &Value) -> ArrayD<f64> {
    match v {
        Value::F32(a) => a.mapv(f64::from),
        Value::F16(a) => a.mapv(f64::from),
        Value::F64(a) => a.clone(),
        Value::I64(a) => a.mapv(|x| x as f64),
        Value::I32(a) => a.mapv(f64::from),
        Value::I8(a) => a.mapv(f64::from),
        Value::U8(a) => a.mapv(f64::from),
        Value::Bool(a) => a.mapv(|x| x as u8 as f64),
        Value::I16(a) => a.mapv(f64::from),
        Value::U16(a) => a.mapv(f64::from),
        Value::U32(a) => a.mapv(f64::from),
        Value::U64(a) => a.mapv(|x| x as f64),
        Value::BF16(a) => a.mapv(f64::from),
    }
}

/// Relative tolerance for outputs of this element type: 1e-4 for float32/float64 and exact
/// types; 1e-2 for float16, whose unit roundoff is ~4.9e-4 and where engines differ in when
/// they round intermediate results to float16 (one rounding differs by up to ~1e-3 relative,
/// and several layers add up).
pub fn tolerance(v: &Value) -> f64 {
    match v {
        Value::F16(_) => 1e-2,
        _ => 1e-4,
    }
}

/// Outcome of comparing one output with a reference.
pub struct Diff {
    /// Largest |got - want| (infinite on a shape mismatch or a NaN in only one of them).
    pub max_abs: f64,
    /// The allowed difference: `tol * max(1, max |want|)`.
    pub limit: f64,
}

impl Diff {
    pub fn ok(&self) -> bool {
        self.max_abs <= self.limit
    }
}

/// Compares `got` with `want` within `tol` relative to the reference's scale.
pub fn compare(got: &Value, want: &Value, tol: f64) -> Diff {
    let (g, w) = (to_f64(got), to_f64(want));
    let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    let limit = tol * scale;
    if g.shape() != w.shape() {
        return Diff {
            max_abs: f64::INFINITY,
            limit,
        };
    }
    let max_abs = g.iter().zip(w.iter()).fold(0.0f64, |m, (a, b)| {
        let d = if a.is_nan() || b.is_nan() {
            if a.is_nan() && b.is_nan() {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (a - b).abs()
        };
        m.max(d)
    });
    Diff { max_abs, limit }
}

/// Name of a fixture model (file stem).
pub fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}
