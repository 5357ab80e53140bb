#!/usr/bin/env python3
"""Int8 latency of the built-in runtime vs onnxruntime on the tutorial-sized word LM (issue 5),
and what plan-time kernel fusion buys (issue 6).

Usage: bench_int8.py ONNX_DYNQ_BINARY [--batches 1,10] [--repeat 20] [--threads 1]
                     [--variants scan,mixed,ort] [--rounds 1]

Builds the float model of scripts/bench_float.py (Gather 33278x512, five LSTMs of 256,
MatMul+Add to 33278; seq 35; random weights, fixed seed) in a temporary folder and rewrites it
with `onnx-dynq rewrite` into these int8 variants:
  scan   `--lstm onnx`: LSTMs as Scan over standard ops (DynamicQuantizeLinear, MatMulInteger)
  mixed  `--ops MatMul,Gemm,Gather`: embedding and decoder int8, LSTMs float
  ort    default `--lstm ort`: com.microsoft DynamicQuantizeLSTM
Then per batch size, in one run, it times (p50/p90 of N runs after a warm-up, 1 thread):
  ours on the float file, ours on each int8 file (fused, and with --no-kernel-fusion),
  onnxruntime (ORT_ENABLE_ALL) on the float file and on each int8 file,
and prints the ratios issue 5 asks for: ours-int8 speed-up over ours-float (target >= 2.0x),
ours-int8 / ORT-int8 (target <= 1.25x), and fused vs unfused. It checks that our output of each
int8 file matches onnxruntime's on the same file (max |diff| relative to the float logits' max
|value|; target 1e-4) and reports the decoder GEMM throughput (GOP/s) from `run --profile` on the
`mixed` file, where the decoder is the only int8 Linear. A variant our runtime cannot run is
reported and skipped. With --rounds R the timings are repeated R times and the median p50 kept.
Nothing is written outside a temporary folder.
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cli, ort_session, ours_cmd, save_feeds, save_model, time_ort, time_ours  # noqa: E402
from bench_float import HID, SEQ, VOCAB, build, lm_feed  # noqa: E402

VARIANTS = {
    "scan": ["--lstm", "onnx"],
    "mixed": ["--ops", "MatMul,Gemm,Gather"],
    "ort": [],
}
DECODER_OP = "DynamicQuantizeLinear+MatMulInteger+Cast+Mul+Mul+Add"


def build_decoder(path: Path, m: int) -> None:
    """The LM's decoder alone: MatMul [m, 256] x [256, 33278] + bias (same random init)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    s = 1.0 / np.sqrt(HID)
    w = numpy_helper.from_array(rng.uniform(-s, s, (HID, VOCAB)).astype(np.float32), "dec_w")
    b = numpy_helper.from_array(rng.uniform(-s, s, (VOCAB,)).astype(np.float32), "dec_b")
    save_model(
        path,
        [helper.make_node("MatMul", ["x", "dec_w"], ["mm"]),
         helper.make_node("Add", ["mm", "dec_b"], ["y"])],
        "decoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, HID])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, VOCAB])],
        [w, b],
        check=False,
    )


def profile_op(binary, model, feed_files, threads, op, tries=3):
    best = None
    for _ in range(tries):
        cmd = ours_cmd(binary, model, feed_files, threads, ["--profile", "--json"])
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        for row in json.loads(r.stdout).get("profile_ms", []):
            if row["op"] == op:
                best = row["ms"] if best is None else min(best, row["ms"])
    return best


def main() -> int:
    parsed = cli(__doc__)
    if parsed is None:
        return 2
    binary, opt, batches, repeat, threads = parsed
    rounds = int(opt("--rounds", "1"))
    variants = opt("--variants", "scan,mixed,ort").split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fmodel = tmp / "word_lm_bench.onnx"
        build(fmodel)
        files = {}
        for v in variants:
            files[v] = tmp / f"word_lm_int8_{v}.onnx"
            subprocess.run([binary, "rewrite", str(fmodel), str(files[v]), *VARIANTS[v]],
                           check=True, capture_output=True)
        mk = lambda p: ort_session(p, threads)
        ort_float = mk(fmodel)
        ort_int8 = {v: mk(f) for v, f in files.items()}
        print(f"float model {fmodel.stat().st_size / 1e6:.1f} MB; int8: "
              + ", ".join(f"{v} {f.stat().st_size / 1e6:.1f} MB" for v, f in files.items())
              + f"; seq {SEQ}, threads {threads}, {repeat} runs x {rounds} round(s)")
        for batch in batches:
            rng, feed = lm_feed(batch)
            feed_files = save_feeds(tmp, feed)
            ref_float = ort_float.run(None, feed)
            scale = float(np.abs(ref_float[0]).max())
            res = {}  # name -> list of (p50, p90)
            errors = {}

            def add(name, v):
                if v is not None:
                    res.setdefault(name, []).append(v)

            for _ in range(rounds):
                add("ort float", time_ort(ort_float, feed, repeat))
                p, _e = time_ours(binary, fmodel, feed_files, threads, repeat, tmp / "of.npz")
                add("ours float", p)
                for v, f in files.items():
                    add(f"ort int8 {v}", time_ort(ort_int8[v], feed, repeat))
                    p, e = time_ours(binary, f, feed_files, threads, repeat, tmp / f"o_{v}.npz")
                    add(f"ours int8 {v}", p)
                    if e:
                        errors[v] = e
                        continue
                    p, _e = time_ours(binary, f, feed_files, threads, repeat,
                                      tmp / f"u_{v}.npz", ["--no-kernel-fusion"])
                    add(f"ours int8 {v} unfused", p)
            med = {k: (statistics.median(a for a, _ in xs), statistics.median(b for _, b in xs))
                   for k, xs in res.items()}
            print(f"\nbatch {batch}:")
            for k, (p50, p90) in med.items():
                print(f"  {k:26s} p50 {p50:8.2f} ms  p90 {p90:8.2f} ms")
            of = med["ours float"][0]
            print(f"  ours float / ORT float: {of / med['ort float'][0]:.2f}x")
            for v in files:
                if v in errors:
                    print(f"  [{v}] our runtime cannot run it: {errors[v]}")
                    continue
                oi, oi_u = med[f"ours int8 {v}"][0], med[f"ours int8 {v} unfused"][0]
                ri = med[f"ort int8 {v}"][0]
                ours = np.load(tmp / f"o_{v}.npz")
                unf = np.load(tmp / f"u_{v}.npz")
                ref = ort_int8[v].run(None, feed)
                names = ["logits", "hn", "cn"]
                diff = max(float(np.abs(ours[n] - r).max()) for n, r in zip(names, ref))
                fdiff = max(float(np.abs(ours[n] - unf[n]).max()) for n in names)
                print(
                    f"  [{v}] ours int8 is {of / oi:.2f}x faster than ours float (target >= 2.0); "
                    f"ours/ORT int8 {oi / ri:.2f}x (target <= 1.25); fused {oi_u / oi:.2f}x faster "
                    f"than unfused; ORT int8 {med['ort float'][0] / ri:.2f}x faster than ORT float; "
                    f"max |ours - ORT| {diff:.2e} = {diff / scale:.1e} of the float scale "
                    f"{scale:.3f}; max |fused - unfused| {fdiff:.1e}"
                )
            if "mixed" in files and "mixed" not in errors:
                ms = profile_op(binary, files["mixed"], feed_files, threads, DECODER_OP)
                if ms:
                    gop = 2 * SEQ * batch * HID * VOCAB / 1e9
                    print(f"  decoder int8 GEMM {SEQ * batch}x{HID}x{VOCAB} in the model run: "
                          f"{ms:.2f} ms (best of 3 profiles) = {gop / ms * 1e3:.0f} GOP/s "
                          f"(machine peak 472.9 GOP/s, BENCHMARKS.md)")
            # The decoder alone, rewritten, in both runtimes (p50 of N runs).
            m = SEQ * batch
            dec, decq = tmp / f"dec{m}.onnx", tmp / f"dec{m}_int8.onnx"
            build_decoder(dec, m)
            subprocess.run([binary, "rewrite", str(dec), str(decq)], check=True, capture_output=True)
            x = rng.standard_normal((m, HID)).astype(np.float32)
            np.save(tmp / "x.npy", x)
            r50, _ = time_ort(mk(decq), {"x": x}, repeat)
            p, e = time_ours(binary, decq, {"x": tmp / "x.npy"}, threads, repeat, tmp / "d.npz")
            gop = 2 * m * HID * VOCAB / 1e9
            if p:
                print(f"  decoder alone (int8, {m}x{HID}x{VOCAB} + bias): ours p50 {p[0]:.2f} ms = "
                      f"{gop / p[0] * 1e3:.0f} GOP/s, ORT p50 {r50:.2f} ms = "
                      f"{gop / r50 * 1e3:.0f} GOP/s; ours/ORT {p[0] / r50:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
