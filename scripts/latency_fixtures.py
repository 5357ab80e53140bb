#!/usr/bin/env python3
"""onnxruntime latency of each fixture: float vs `onnx-dynq rewrite` (default policy).

Usage: latency_fixtures.py [--bin target/release/onnx-dynq] [--fixtures fixtures]
       [--runs 300] [--threads 1] [-- extra rewrite args]

Float and quantized sessions run interleaved in one process (these machines are noisy, so
only ratios from one run mean anything); prints the median latency of each and their ratio.
A ratio above 1 means the rewrite made the fixture slower: the policy's thresholds
(src/passes/quantize/policy.rs) exist to prevent that.
"""
import argparse, json, os, subprocess, sys, tempfile, time
import numpy as np
import onnxruntime as ort

FIXTURES = ["mlp", "mlp_fp16", "word_lm", "word_lm_dynamo", "if_branch", "bilstm", "gru", "conv_bn_relu"]


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/onnx-dynq")
    ap.add_argument("--fixtures", default="fixtures")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("extra", nargs="*", help="extra rewrite arguments (after --)")
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in FIXTURES:
            src = os.path.join(a.fixtures, name + ".onnx")
            if not os.path.exists(src):
                print(f"{name}: missing, skipped", file=sys.stderr)
                continue
            out = os.path.join(tmp, name + ".onnx")
            rep = os.path.join(tmp, name + ".json")
            subprocess.run([a.bin, "rewrite", src, out, "--report", rep, *a.extra], check=True,
                           stdout=subprocess.DEVNULL)
            quantized = json.load(open(rep))["totals"]["nodes_quantized"]
            d = np.load(os.path.join(a.fixtures, name + ".npz"))
            feeds = {k[6:]: d[k] for k in d.files if k.startswith("input.")}
            sf, sq = session(src, a.threads), session(out, a.threads)
            for s in (sf, sq):
                for _ in range(20):
                    s.run(None, feeds)
            tf, tq = [], []
            for _ in range(a.runs):
                t = time.perf_counter(); sf.run(None, feeds); tf.append(time.perf_counter() - t)
                t = time.perf_counter(); sq.run(None, feeds); tq.append(time.perf_counter() - t)
            mf, mq = float(np.median(tf)), float(np.median(tq))
            r = {"fixture": name, "quantized_nodes": quantized, "float_ms": mf * 1e3,
                 "quantized_ms": mq * 1e3, "ratio": mq / mf}
            results.append(r)
            print(f"{name:16s} quantized {quantized:2d}  float {mf*1e3:8.3f} ms  "
                  f"rewritten {mq*1e3:8.3f} ms  ratio {mq/mf:5.2f}")
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
