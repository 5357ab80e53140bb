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

use common::fixture_io::{self, compare, stem, tolerance};
use common::tract::run_tract_caught;
use onnx_dynq::runtime::{Options, Session};

/// Fixtures tract-onnx 0.23.9 cannot run: (fixture, text tract's error contains, why).
const TRACT_CANNOT_RUN: &[(&str, &str, &str)] = &[(
    "mlp_fp16",
    "Output mismatch after rewiring expansion",
    "tract's Gemm expansion computes a float16 Gemm in float32 and rejects its own rewrite",
)];

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
