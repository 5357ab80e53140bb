//! The built-in runtime on every fixture: its outputs match torch's (stored in the fixture's
//! npz) and onnxruntime's (computed here on the same inputs, one thread).
//!
//! Tolerance: `|ours - ref| <= tol * max(1, max |ref|)` per output, with tol 1e-4 for float32
//! and 1e-2 for float16 (see `fixture_io::tolerance`). Every fixture and output is checked and
//! printed before the test fails, so one failure does not hide another.

mod common;

use common::fixture_io::{self, Sample, compare, stem, tolerance};
use onnx_dynq::runtime::{Options, Session, Value};

/// Checks one engine's outputs against a reference set; returns the failure lines.
fn check(
    fixture: &str,
    reference: &str,
    ours: &[(String, Value)],
    want: &std::collections::BTreeMap<String, Value>,
) -> Vec<String> {
    let mut fails = Vec::new();
    if ours.len() != want.len() {
        fails.push(format!(
            "{fixture}: {} outputs, {reference} has {}",
            ours.len(),
            want.len()
        ));
    }
    for (name, got) in ours {
        let Some(w) = want.get(name) else {
            fails.push(format!("{fixture}: {reference} has no output '{name}'"));
            continue;
        };
        // Float16 references are widened to float32 in the sample (see fixture_io).
        let same_type =
            got.dtype() == w.dtype() || matches!((got, w), (Value::F16(_), Value::F32(_)));
        let d = compare(got, w, tolerance(got));
        let verdict = if d.ok() && same_type { "PASS" } else { "FAIL" };
        println!(
            "{fixture:<16} {name:<8} vs {reference:<12} max|diff| {:.3e}  limit {:.3e}  {:?} {:?}  {verdict}",
            d.max_abs,
            d.limit,
            got.shape(),
            got.dtype()
        );
        if verdict == "FAIL" {
            fails.push(format!(
                "{fixture}/{name} vs {reference}: max|diff| {:.3e} > limit {:.3e} (shapes {:?} vs {:?}, types {:?} vs {:?})",
                d.max_abs,
                d.limit,
                got.shape(),
                w.shape(),
                got.dtype(),
                w.dtype()
            ));
        }
    }
    fails
}

#[test]
fn every_fixture_matches_torch_and_onnxruntime() {
    let mut fails = Vec::new();
    for path in common::fixture_models() {
        let fixture = stem(&path);
        let sample: Sample = fixture_io::sample(&path, true);
        let model = onnx_dynq::load(&path).unwrap();
        let outs = Session::new(&model, &Options::with_threads(1))
            .and_then(|s| s.run(fixture_io::feeds(&s, &sample)));
        let outs = match outs {
            Ok(o) => o,
            Err(e) => {
                fails.push(format!("{fixture}: runtime failed: {e}"));
                continue;
            }
        };
        fails.extend(check(&fixture, "torch", &outs, &sample.torch));
        fails.extend(check(&fixture, "onnxruntime", &outs, &sample.ort));
    }
    assert!(
        fails.is_empty(),
        "{} failure(s):\n{}",
        fails.len(),
        fails.join("\n")
    );
}
