//! The ONNX backend node test cases, run through the built-in runtime.
//!
//! Cases come from `scripts/export_conformance.py` (the test cases that ship inside the `onnx`
//! wheel, serialized as model + TensorProto files) in `ONNX_DYNQ_CONFORMANCE_DIR`, default
//! `<repo>/target/conformance`; when that folder is missing or incomplete this test runs the
//! script with the python from `ONNX_DYNQ_PYTHON`, else `<repo>/.venv/bin/python`, else
//! `python3`, and fails if it cannot.
//!
//! Every case whose ops (subgraphs included) the runtime registers is run; outputs must match
//! with numpy's `allclose` semantics (`|a - b| <= atol + rtol·|b|`, NaN equals NaN) under the
//! case's tolerances, with the same element type and shape. A failing case fails the test
//! unless `tests/conformance_known_gaps.txt` lists it with a reason. Cases are skipped (and
//! counted) when an op is unregistered or a tensor has an element type the runtime does not
//! store; in a full run every such case must be listed there too, and at least 95% of all
//! cases must pass. It prints `N passed, M failed` (M excludes listed gaps), then the
//! coverage.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use onnx_dynq::runtime::ops::default_registry;
use onnx_dynq::runtime::{Options, Session, Value};

mod common;

use common::backend_cases::{cases_dir, read_value};
use common::repo;

/// Prints past libtest's output capture, so the summary shows on success too.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($t)*);
        let _ = out.flush();
    }};
}

fn known_gaps() -> HashMap<String, String> {
    let text = std::fs::read_to_string(repo().join("tests/conformance_known_gaps.txt"))
        .unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((n, r)) => (n.to_string(), r.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

fn close(got: &Value, want: &Value, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {:?}, expected {:?}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    fn cmp<T: Copy>(
        a: &ndarray::ArrayD<T>,
        b: &ndarray::ArrayD<T>,
        f: impl Fn(T, T) -> bool,
    ) -> Option<usize> {
        a.iter().zip(b.iter()).position(|(&x, &y)| !f(x, y))
    }
    let fclose = |x: f64, y: f64| {
        (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= atol + rtol * y.abs()
    };
    let bad = match (got, want) {
        (Value::F32(a), Value::F32(b)) => cmp(a, b, |x, y| fclose(x as f64, y as f64)),
        (Value::F64(a), Value::F64(b)) => cmp(a, b, fclose),
        (Value::F16(a), Value::F16(b)) => cmp(a, b, |x, y| fclose(x.to_f64(), y.to_f64())),
        (Value::I64(a), Value::I64(b)) => cmp(a, b, |x, y| x == y),
        (Value::I32(a), Value::I32(b)) => cmp(a, b, |x, y| x == y),
        (Value::I8(a), Value::I8(b)) => cmp(a, b, |x, y| x == y),
        (Value::U8(a), Value::U8(b)) => cmp(a, b, |x, y| x == y),
        (Value::Bool(a), Value::Bool(b)) => cmp(a, b, |x, y| x == y),
        (Value::BF16(a), Value::BF16(b)) => cmp(a, b, |x, y| fclose(x.to_f64(), y.to_f64())),
        (Value::I16(a), Value::I16(b)) => cmp(a, b, |x, y| x == y),
        (Value::U16(a), Value::U16(b)) => cmp(a, b, |x, y| x == y),
        (Value::U32(a), Value::U32(b)) => cmp(a, b, |x, y| x == y),
        (Value::U64(a), Value::U64(b)) => cmp(a, b, |x, y| x == y),
        _ => return Err("dtype mismatch".into()),
    };
    match bad {
        None => Ok(()),
        Some(i) => {
            let show =
                |v: &Value| onnx_dynq::dispatch_value!(v, a => format!("{:?}", a.iter().nth(i)));
            Err(format!(
                "element {i} is {} expected {} (rtol {rtol}, atol {atol})",
                show(got),
                show(want)
            ))
        }
    }
}

enum Outcome {
    Pass,
    Fail(String),
    Skip(&'static str),
}

fn run_case(dir: &Path) -> Outcome {
    let meta: serde_json::Value = match std::fs::read(dir.join("meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(m) => m,
        None => return Outcome::Fail("unreadable meta.json".into()),
    };
    let rtol = meta["rtol"].as_f64().unwrap_or(1e-3);
    let atol = meta["atol"].as_f64().unwrap_or(1e-7);
    let sets = meta["data_sets"].as_u64().unwrap_or(1) as usize;
    let model = match onnx_dynq::load(dir.join("model.onnx")) {
        Ok(m) => m,
        Err(e) => {
            // The loader's limits (IR or opset versions newer than this build reads) are not
            // the runtime's; show them without failing.
            say!("SKIP {}: load: {e}", dir.display());
            return Outcome::Skip("model not loadable");
        }
    };
    if !default_registry().unsupported(&model.graph).is_empty() {
        return Outcome::Skip("unsupported op");
    }
    let mut data = Vec::new();
    for k in 0..sets {
        let prefix = if k == 0 {
            String::new()
        } else {
            format!("{k}_")
        };
        let read_all = |kind: &str| -> Result<Vec<Value>, String> {
            let mut v = Vec::new();
            for i in 0.. {
                let p = dir.join(format!("{kind}_{prefix}{i}.pb"));
                if !p.exists() {
                    break;
                }
                v.push(read_value(&p)?);
            }
            Ok(v)
        };
        match (read_all("input"), read_all("output")) {
            (Ok(i), Ok(o)) => data.push((i, o)),
            _ => return Outcome::Skip("element type not stored by the runtime"),
        }
    }
    let session = match Session::new(&model, &Options::default()) {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("Session::new: {e}")),
    };
    let names: Vec<String> = session.inputs().map(|i| i.name.clone()).collect();
    for (k, (inputs, outputs)) in data.into_iter().enumerate() {
        if inputs.len() != names.len() {
            return Outcome::Fail(format!(
                "{} inputs given, the graph has {}",
                inputs.len(),
                names.len()
            ));
        }
        let feed: HashMap<String, Value> = names.iter().cloned().zip(inputs).collect();
        let got = match session.run(feed) {
            Ok(g) => g,
            Err(e) => return Outcome::Fail(format!("run: {e}")),
        };
        if got.len() != outputs.len() {
            return Outcome::Fail(format!("{} outputs, expected {}", got.len(), outputs.len()));
        }
        for ((name, g), w) in got.iter().zip(&outputs) {
            if let Err(e) = close(g, w, rtol, atol) {
                return Outcome::Fail(format!("data set {k}, output '{name}': {e}"));
            }
        }
    }
    Outcome::Pass
}

#[test]
fn onnx_backend_node_cases() {
    let dir = cases_dir();
    let gaps = known_gaps();
    // ONNX_DYNQ_CONFORMANCE_VERBOSE=1 also lists the passing cases.
    let verbose = std::env::var_os("ONNX_DYNQ_CONFORMANCE_VERBOSE").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());
    // ONNX_DYNQ_CONFORMANCE_FILTER=a,b runs only the cases whose name contains one of the
    // substrings (for work on one op family); the coverage bar below applies to full runs.
    let filter: Option<Vec<String>> = std::env::var("ONNX_DYNQ_CONFORMANCE_FILTER")
        .ok()
        .map(|f| f.split(',').map(str::to_string).collect());
    if let Some(f) = &filter {
        cases.retain(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            f.iter().any(|s| n.contains(s.as_str()))
        });
    }
    let (mut passed, mut failed, mut known) = (0, 0, 0);
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut stale = Vec::new();
    // Cases that do not run (an op or element type the runtime lacks) and are not listed.
    let mut unlisted = Vec::new();
    for case in &cases {
        let name = case
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let outcome = std::panic::catch_unwind(|| run_case(case))
            .unwrap_or_else(|_| Outcome::Fail("panicked".into()));
        match outcome {
            Outcome::Pass => {
                if verbose {
                    say!("PASS {name}");
                }
                passed += 1;
                if gaps.contains_key(&name) {
                    stale.push(name);
                }
            }
            Outcome::Skip(why) => {
                *skipped.entry(why).or_default() += 1;
                if !gaps.contains_key(&name) {
                    unlisted.push(format!("{name} ({why})"));
                }
            }
            Outcome::Fail(msg) => match gaps.get(&name) {
                Some(_) => known += 1,
                None => {
                    say!("FAIL {name}: {msg}");
                    failed += 1;
                }
            },
        }
    }
    for s in &stale {
        say!("note: {s} passes but is listed in tests/conformance_known_gaps.txt");
    }
    say!("skipped: {skipped:?}; known gaps (listed, failing): {known}");
    say!("{passed} passed, {failed} failed");
    assert_eq!(
        failed, 0,
        "{failed} conformance cases failed (see FAIL lines above)"
    );
    // The bars below hold for the whole suite; a filtered run is for work on one family.
    if filter.is_none() {
        for u in &unlisted {
            say!("UNLISTED {u}");
        }
        assert!(
            unlisted.is_empty(),
            "{} cases neither pass nor are listed in tests/conformance_known_gaps.txt (see UNLISTED lines)",
            unlisted.len()
        );
        let total = cases.len();
        say!(
            "coverage: {passed} of {total} cases pass ({:.1}%)",
            100.0 * passed as f64 / total as f64
        );
        assert!(
            passed * 100 >= total * 95,
            "only {passed} of {total} conformance cases pass; the bar is 95%"
        );
    }
}
