#!/usr/bin/env python3
"""Why the encoder speed target of issue 12 (cosine >= 0.999 while >= 1.8x faster than float
in onnxruntime) is out of reach on a CPU without VNNI, measured in three parts.

1. Where onnxruntime's time goes (its profiler, 1 thread, per op type, median of --rounds
   profiled runs of 20): float all-MiniLM-L6-v2, `quantize_dynamic`'s file, and `onnx-dynq
   rewrite`'s files (default; `--weight-type int8 --per-channel --reduce-range`). The int8
   products (MatMulInteger, DynamicQuantizeMatMul, MatMulIntegerToFloat) are separated from
   everything else. The ceiling printed for each file is float's kernel time over (the
   incumbent's time outside its products + this file's products): what the file would reach
   if its per-token chain cost nothing and the rest of the graph ran as fast as in the
   incumbent's fully fused file; and the time 1.8x leaves for all the products.
2. Which (activation, weight) forms can reach 0.999 at all: fake quantization of every
   weight MatMul in onnxruntime (float arithmetic, exact products), on the 8 sentences of
   fixtures/transformer/minilm_inputs.npz: activations per tensor (DynamicQuantizeLinear) or
   per token (asymmetric uint8, 8 or 7 bits), weights per output channel as uint8 asymmetric
   (8 bits), int8 symmetric (8 bits: exact only with VNNI or in the built-in runtime) or
   int8 7-bit (`--reduce-range`: exact on every CPU), with or without SmoothQuant at alpha
   0.5 / 0.7 (calibrated on the same sentences, as `--smooth` with `--inputs` would be).

3. Whether a shorter per-token chain would help: two alternatives to the rewrite's chain
   (`chain_model`: one with QuantizeLinear doing round+clip+cast, one that maps each row onto
   [0, 1] so that onnxruntime fuses the product), timed against the default rewrite.

Usage: python scripts/experiment_encoder_bound.py ONNX_DYNQ_BINARY [WORKDIR] [--rounds 3]
       [--skip-profile] [--skip-simulation] [--skip-chains]
"""

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import binary_and_workdir  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
INT8_PRODUCTS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def feeds():
    d = np.load(REPO / "fixtures/transformer/minilm_inputs.npz")
    return {k[len("input."):]: d[k] for k in d.files if k.startswith("input.")}


def session(model, profile_prefix=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def profile(path, f, runs=20):
    """(wall ms, {op type: kernel ms}) per run. The profile is written beside `path` and
    removed once read."""
    import time

    s = session(path, profile_prefix=Path(path).with_suffix(""))
    for _ in range(3):
        s.run(None, f)
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, f)
        walls.append(time.perf_counter() - t0)
    trace = Path(s.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    return float(np.median(walls)) * 1e3, {k: v / (runs + 3) / 1e3 for k, v in per_op.items()}


def profile_part(binary, work, rounds):
    float_path = work / "minilm_f.onnx"
    files = {"float": float_path, "quantize_dynamic": work / "minilm_qd.onnx",
             "onnx-dynq default": work / "minilm_default.onnx",
             "onnx-dynq int8 per-channel reduce-range": work / "minilm_rr.onnx"}
    quantize_dynamic(str(float_path), str(files["quantize_dynamic"]), weight_type=QuantType.QInt8)
    for name, args in [("onnx-dynq default", []),
                       ("onnx-dynq int8 per-channel reduce-range",
                        ["--weight-type", "int8", "--per-channel", "--reduce-range"])]:
        subprocess.run([binary, "rewrite", str(float_path), str(files[name]), *args], check=True,
                       capture_output=True)
    f = feeds()
    results = {name: [] for name in files}
    for _ in range(rounds):  # every file once per round: load drifts over all alike
        for name, p in files.items():
            results[name].append(profile(p, f))
    summary = {}
    for name, rs in results.items():
        wall = float(np.median([r[0] for r in rs]))
        ops = collections.Counter()
        for _, per_op in rs:
            for k, v in per_op.items():
                ops[k] += v / len(rs)
        products = sum(v for k, v in ops.items() if k in INT8_PRODUCTS)
        summary[name] = (wall, products, sum(ops.values()) - products, ops)
    print("## onnxruntime profile (1 thread, ms per run)")
    print(f"{'file':42s} {'wall':>7s} {'int8 products':>14s} {'rest':>7s}  largest ops")
    for name, (wall, products, rest, ops) in summary.items():
        top = ", ".join(f"{k} {v:.2f}" for k, v in ops.most_common(4))
        print(f"{name:42s} {wall:7.2f} {products:14.2f} {rest:7.2f}  {top}")
    # Kernel sums, not the profiled wall times: the profiler's own cost grows with the node
    # count, so profiled walls are unfair to the longer graphs (bench_accuracy.py gives the
    # unprofiled times).
    t_float = sum(summary["float"][3].values())
    floor = summary["quantize_dynamic"][2]
    budget = t_float / 1.8 - floor
    print(f"\nfloat: {t_float:.2f} ms of kernels, {summary['float'][3].get('MatMul', 0):.2f} of them "
          f"MatMul; the incumbent's time outside its int8 products (the rest-of-graph floor): "
          f"{floor:.2f} ms; 1.8x float leaves {budget:.2f} ms for every int8 product")
    for name in list(files)[1:]:
        products = summary[name][1]
        print(f"{name:42s} products {products:6.2f} ms; ceiling with a free per-token chain: "
              f"{t_float / (floor + products):.2f}x float")


# --------------------------------------------------------------------------------------------
# Part 2: fake quantization
# --------------------------------------------------------------------------------------------


class GraphEdit:
    """Appends constants and nodes to a graph being rebuilt; names carry `prefix`."""

    def __init__(self, graph, prefix):
        self.graph, self.prefix, self.nodes, self.count = graph, prefix, [], 0

    def const(self, name, arr):
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), f"{self.prefix}_{name}"))
        return f"{self.prefix}_{name}"

    def node(self, op, ins, n_out=1, **kw):
        self.count += 1
        outs = [f"{self.prefix}{self.count}_{op}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, ins, outs, **kw))
        return outs[0] if n_out == 1 else outs

    def finish(self):
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)


def uint8_per_channel(w):
    """(codes, zero points, scales) of uint8 asymmetric weights per output column."""
    lo, hi = np.minimum(w.min(0), 0), np.maximum(w.max(0), 0)
    s = (hi - lo) / 255
    s[s == 0] = 1
    zp = np.clip(np.round(-lo / s), 0, 255)
    return np.clip(np.round(w / s) + zp, 0, 255), zp, s


def weight_fake_quant(w, kind):
    """The dequantized weight of `kind` (per output column)."""
    if kind == "uint8":
        q, zp, s = uint8_per_channel(w)
        return (q - zp) * s
    qmax = {"int8": 127, "int8 7-bit": 63}[kind]
    s = np.abs(w).max(0) / qmax
    s[s == 0] = 1
    return np.clip(np.round(w / s), -qmax, qmax) * s


def fake_quant_model(src, inits, amax, act, act_levels, wkind, alpha):
    m = onnx.load(str(src))
    e = GraphEdit(m.graph, "fq")
    const, node = e.const, e.node
    f32 = lambda v: np.array(v, np.float32)
    zero, levels = const("zero", f32(0)), const("levels", f32(act_levels))
    tiny = const("tiny", f32(np.finfo(np.float32).tiny))
    k = 0
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and inits[n.input[1]].ndim == 2:
            w, a = inits[n.input[1]].astype(np.float32), n.input[0]
            if alpha is not None:
                s = np.maximum(amax[a], 1e-5) ** alpha / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - alpha)
                w = w * s[:, None]
                a = node("Mul", [a, const(f"smooth{k}", (1 / s).astype(np.float32))])
            if act == "per-token":
                hi = node("Max", [node("ReduceMax", [a], axes=[-1], keepdims=1), zero])
                lo = node("Min", [node("ReduceMin", [a], axes=[-1], keepdims=1), zero])
                scale = node("Max", [node("Div", [node("Sub", [hi, lo]), levels]), tiny])
                zp = node("Round", [node("Div", [node("Neg", [lo]), scale])])
                q = node("Clip", [node("Add", [node("Round", [node("Div", [a, scale])]), zp]), zero, levels])
                a = node("Mul", [node("Sub", [q, zp]), scale])
            else:
                q, scale, zp = node("DynamicQuantizeLinear", [a], n_out=3)
                a = node("DequantizeLinear", [q, scale, zp])
            n.input[0] = a
            n.input[1] = const(f"w{k}", weight_fake_quant(w, wkind).astype(np.float32))
            k += 1
        e.nodes.append(n)
    e.finish()
    return m


def encoder_figures(f, q, mask):
    fm, qm = f.reshape(-1, f.shape[-1]).astype(np.float64), q.reshape(-1, q.shape[-1]).astype(np.float64)
    cos = (fm * qm).sum(1) / np.linalg.norm(fm, axis=1) / np.linalg.norm(qm, axis=1)
    w = mask[..., None]
    pf, pq = (f * w).sum(1) / w.sum(1), (q * w).sum(1) / w.sum(1)
    pooled = (pf * pq).sum(1) / np.linalg.norm(pf, axis=1) / np.linalg.norm(pq, axis=1)
    return cos[mask.reshape(-1).astype(bool)].mean(), pooled.min()


def simulation_part(work):
    src = work / "minilm_f.onnx"
    f = feeds()
    base = onnx.load(str(src))
    inits = {t.name: numpy_helper.to_array(t) for t in base.graph.initializer}
    weight_mms = [n for n in base.graph.node if n.op_type == "MatMul" and n.input[1] in inits
                  and inits[n.input[1]].ndim == 2]
    probe = onnx.load(str(src))
    probe.graph.output.extend([onnx.ValueInfoProto(name=n.input[0]) for n in weight_mms])
    outs = session(probe).run(None, f)
    amax = {n.input[0]: np.abs(o).reshape(-1, o.shape[-1]).max(0) for n, o in zip(weight_mms, outs[1:])}
    float_out, mask = outs[0], f["attention_mask"]
    print("\n## fake quantization of MiniLM's 36 weight MatMuls (exact products), 8 sentences")
    print(f"{'activations':22s} {'weights':11s} {'smooth':>6s} {'valid-token cos':>16s} {'pooled min':>11s}")
    grid = [("per-tensor", 255), ("per-token", 255), ("per-token 7-bit", 127)]
    for act, levels in grid:
        for wkind in ["uint8", "int8", "int8 7-bit"]:
            for alpha in [None, 0.5, 0.7]:
                m = fake_quant_model(src, inits, amax, act.split()[0], levels, wkind, alpha)
                valid, pooled = encoder_figures(float_out, session(m).run(None, f)[0], mask)
                mark = "  >= 0.999" if min(valid, pooled) >= 0.999 else ""
                print(f"{act:22s} {wkind:11s} {alpha or '-':>6} {valid:16.5f} {pooled:11.5f}{mark}",
                      flush=True)


# --------------------------------------------------------------------------------------------
# Part 3: two shorter per-token chains, in real integer ops, against the rewrite's own
# --------------------------------------------------------------------------------------------


def chain_model(src, inits, form, shape):
    """MiniLM with every weight MatMul as uint8 per-token activations x uint8 per-channel
    weights, in one of two chains shorter than the rewrite's:
    - "compact": ReduceMax/ReduceMin, then Div, Add (row zero point) and
      QuantizeLinear(x, 1, 0) for the row quantization (rounding, clipping and the cast in
      one op), MatMulInteger, then (Cast(acc) - z (x) c) * (s (x) W_scale);
    - "row-normalized": each row mapped onto [0, 1] by its own min and range, quantized by
      DynamicQuantizeLinear (which then always finds scale 1/255, zero point 0), so that
      onnxruntime fuses the product into DynamicQuantizeMatMul / MatMulIntegerToFloat; then
      Y = range * Y' + Gemm(min, colsum(W)) (the offset's rank-1 term).
    Both flatten A to 2-D, as the rewrite does (onnxruntime's MatMulInteger is slower on 3-D A).
    """
    m = onnx.load(str(src))
    e = GraphEdit(m.graph, "ch")
    const, node, cache = e.const, e.node, {}
    f32 = lambda v: np.array(v, np.float32)
    zero, c255, one = const("zero", f32(0)), const("255", f32(255)), const("one", f32(1))
    tiny, u0 = const("tiny", f32(np.finfo(np.float32).tiny)), const("u0", np.array(0, np.uint8))
    k = 0
    for n in m.graph.node:
        if not (n.op_type == "MatMul" and n.input[1] in inits and inits[n.input[1]].ndim == 2):
            e.nodes.append(n)
            continue
        w = inits[n.input[1]].astype(np.float32)
        wq, wzp, ws = uint8_per_channel(w)
        colsum = (wq - wzp).sum(0).astype(np.float32)
        wq_name, wzp_name = const(f"wq{k}", wq.astype(np.uint8)), const(f"wzp{k}", wzp.astype(np.uint8))
        ws_name = const(f"ws{k}", ws.astype(np.float32))
        a = n.input[0]
        if a not in cache:
            a2 = node("Reshape", [a, const(f"rows{k}", np.array([-1, w.shape[0]], np.int64))])
            row_hi = node("ReduceMax", [a2], axes=[1], keepdims=1)
            row_lo = node("ReduceMin", [a2], axes=[1], keepdims=1)
            if form == "compact":
                row_hi, row_lo = node("Max", [row_hi, zero]), node("Min", [row_lo, zero])
                scale = node("Max", [node("Div", [node("Sub", [row_hi, row_lo]), c255]), tiny])
                zp = node("Round", [node("Div", [node("Neg", [row_lo]), scale])])
                q = node("QuantizeLinear", [node("Add", [node("Div", [a2, scale]), zp]), one, u0])
                cache[a] = (q, scale, zp)
            else:
                span = node("Max", [node("Sub", [row_hi, row_lo]), tiny])
                unit = node("Div", [node("Sub", [a2, row_lo]), span])
                cache[a] = (node("DynamicQuantizeLinear", [unit], n_out=3), span, row_lo)
        if form == "compact":
            q, scale, zp = cache[a]
            acc = node("Cast", [node("MatMulInteger", [q, wq_name, "", wzp_name])], to=1)
            centered = node("Sub", [acc, node("Mul", [zp, const(f"c{k}", colsum)])])
            y = node("Mul", [centered, node("Mul", [scale, ws_name])])
        else:
            (q, q_scale, q_zp), span, row_lo = cache[a]
            acc = node("Cast", [node("MatMulInteger", [q, wq_name, q_zp, wzp_name])], to=1)
            unit_y = node("Mul", [acc, node("Mul", [q_scale, ws_name])])
            offset = node("Gemm", [row_lo, const(f"v{k}", (colsum * ws)[None, :].astype(np.float32))])
            y = node("Add", [node("Mul", [unit_y, span]), offset])
        out_shape = const(f"out{k}", np.array([*shape, w.shape[1]], np.int64))
        e.nodes.append(helper.make_node("Reshape", [y, out_shape], [n.output[0]]))
        k += 1
    e.finish()
    return m


def chain_part(binary, work, rounds):
    import time

    src = work / "minilm_f.onnx"
    default = work / "minilm_default.onnx"
    if not default.exists():
        subprocess.run([binary, "rewrite", str(src), str(default)], check=True, capture_output=True)
    f = feeds()
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(src)).graph.initializer}
    shape = list(f["input_ids"].shape)
    models = {"float": onnx.load(str(src)), "onnx-dynq default": onnx.load(str(default))}
    for form in ["compact", "row-normalized"]:
        models[f"{form} chain"] = chain_model(src, inits, form, shape)
    sessions = {k: session(m) for k, m in models.items()}
    float_out, mask = sessions["float"].run(None, f)[0], f["attention_mask"]
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            s.run(None, f)
            t = []
            for _ in range(15):
                t0 = time.perf_counter()
                s.run(None, f)
                t.append(time.perf_counter() - t0)
            times[k].append(float(np.median(t)) * 1e3)
    t_float = float(np.median(times["float"]))
    print("\n## per-token chains in onnxruntime (uint8 x uint8 per channel; median of rounds)")
    for k, s in sessions.items():
        valid, pooled = encoder_figures(float_out, s.run(None, f)[0], mask)
        t = float(np.median(times[k]))
        print(f"{k:22s} {len(models[k].graph.node):5d} nodes {t:7.2f} ms {t_float / t:5.2f}x float  "
              f"cos {valid:.5f} pooled {pooled:.5f}")


def main() -> int:
    parsed = binary_and_workdir(__doc__)
    if parsed is None:
        return 2
    binary, work, opt, args = parsed
    rounds = int(opt("--rounds", "3"))
    float_path = work / "minilm_f.onnx"
    if not float_path.exists():
        subprocess.run([sys.executable, str(REPO / "scripts/minilm.py"), "float", str(float_path)],
                       check=True)
    print(f"onnxruntime {ort.__version__}; binary {binary}")
    if "--skip-profile" not in args:
        profile_part(binary, work, rounds)
    if "--skip-simulation" not in args:
        simulation_part(work)
    if "--skip-chains" not in args:
        chain_part(binary, work, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
