"""Checks rewritten recurrent models against their float references (tests/rewrite_rnn.rs).

Usage: compare.py MODELDIR JOBS.json   (models from make_models.py)
       compare.py --npz JOBS.json      (fixtures: jobs {tag, file, npz})

JOBS.json: a list of {case, file, ...}; MODELDIR holds make_models.py's output. For each job:
onnx.checker.check_model(file, full_check=True), run the rewritten model in onnxruntime (a
float layout-1 op, which onnxruntime lacks, between Transposes; a float fp16 op in onnx's
reference evaluator) and the
case's float reference in onnxruntime, and print one JSON line per job with, per output, the
largest absolute difference and the cosine similarity.

With ONNX_DYNQ_EXACT_BIN set (the tests set it where onnxruntime's u8 x s8 products saturate:
x86 without VNNI), onnxruntime's outputs are first checked against `onnx-dynq run
--ort-u8s8-saturation` (the runtime's emulation of that kernel), and the metrics are then taken
from `onnx-dynq run`: the ONNX definition of the rewritten model.
"""

import json
import os
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def reference(mdir, case, feeds):
    """Float outputs in the case's own layout, from the layout-0 float32 twin."""
    layout = case["layout"]
    rfeeds = {}
    for n, v in feeds.items():
        if layout and (n == "X" or n.startswith("initial")):
            v = np.swapaxes(v, 0, 1)
        if v.dtype == np.float16:
            v = v.astype(np.float32)
        rfeeds[n] = np.ascontiguousarray(v)
    sess = session(f"{mdir}/{case['name']}.ref.onnx")
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, rfeeds)
    if layout:
        outs = [np.transpose(o, (2, 0, 1, 3)) if o.ndim == 4 else np.swapaxes(o, 0, 1) for o in outs]
    return dict(zip(names, outs))


def to_layout0(model):
    """The same model with every layout-1 LSTM/GRU/RNN run time-major between Transposes
    (onnxruntime implements layout 0 only)."""
    from onnx import helper

    nodes = []
    for n in model.graph.node:
        layout = [a for a in n.attribute if a.name == "layout"]
        if n.op_type not in ("LSTM", "GRU", "RNN") or not layout or layout[0].i == 0:
            nodes.append(n)
            continue
        n.attribute.remove(layout[0])
        for i in (0, 5, 6):
            if i < len(n.input) and n.input[i]:
                t = n.input[i] + "__time_major"
                nodes.append(helper.make_node("Transpose", [n.input[i]], [t], perm=[1, 0, 2]))
                n.input[i] = t
        post = []
        for i, o in enumerate(n.output):
            if o:
                t = o + "__time_major"
                perm = [2, 0, 1, 3] if i == 0 else [1, 0, 2]
                post.append(helper.make_node("Transpose", [t], [o], perm=perm))
                n.output[i] = t
        nodes += [n] + post
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def run_model(path, feeds):
    names = [o.name for o in onnx.load(path, load_external_data=False).graph.output]
    try:
        return session(path).run(None, feeds), "onnxruntime", names
    except Exception as e:  # noqa: BLE001
        if "layout" in str(e):
            model = to_layout0(onnx.load(path))
            return session(model.SerializeToString()).run(None, feeds), "onnxruntime (layout 0)", names
        if "float16" not in str(e).lower() and "NOT_IMPLEMENTED" not in str(e):
            raise
        # The reference evaluator implements DequantizeLinear from opset 19 on; for these
        # inputs (int8/uint8, float scale) 19 computes the same as 10 and 13.
        model = onnx.load(path)
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, 19)
        return ReferenceEvaluator(model).run(None, feeds), "onnx-reference", names


EXACT_BIN = os.environ.get("ONNX_DYNQ_EXACT_BIN")


def dynq_run(path, feeds, names, saturate):
    with tempfile.TemporaryDirectory() as d:
        args = [EXACT_BIN, "run", path, "--threads", "1", "--output", f"{d}/out.npz"]
        for i, (k, v) in enumerate(feeds.items()):
            np.save(f"{d}/{i}.npy", v)
            args += ["--input", f"{k}={d}/{i}.npy"]
        if saturate:
            args.append("--ort-u8s8-saturation")
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"onnx-dynq run failed ({r.returncode}): {r.stderr.strip()}")
        out = np.load(f"{d}/out.npz")
        return [out[n] for n in names]


def exact_outputs(path, feeds, names, got):
    """The ONNX definition's outputs, after checking `got` (onnxruntime's) is what the
    runtime's emulation of its saturating kernel predicts."""
    like = dynq_run(path, feeds, names, True)
    for n, g, l in zip(names, got, like):
        g = np.asarray(g, np.float64)
        scale = max(float(np.abs(g).max()), 1e-6)
        rel = 1e-2 if np.asarray(l).dtype == np.float16 else 2e-4
        d = float(np.abs(np.asarray(l, np.float64) - g).max())
        if d > rel * scale:
            raise ValueError(f"{n}: onnxruntime vs the runtime's emulation of its kernel: {d} (scale {scale})")
    return dynq_run(path, feeds, names, False)


def metric(g, w, name=None):
    g = np.asarray(g, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if g.shape != w.shape:
        raise ValueError(f"{name}: shape {g.shape} != reference {w.shape}")
    cos = float((g * w).sum() / (np.linalg.norm(g) * np.linalg.norm(w) + 1e-30))
    return dict(name=name, max_abs=float(np.abs(g - w).max()), cosine=cos, ref_absmax=float(np.abs(w).max()))


def main_npz(jobs_path):
    """Jobs {tag, file, npz}: inputs `input.<name>`, expected outputs `output.<name>`."""
    for job in json.load(open(jobs_path)):
        res = dict(job=job)
        try:
            onnx.checker.check_model(job["file"], full_check=True)
            data = np.load(job["npz"])
            feeds = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
            sess = session(job["file"])
            names = [o.name for o in sess.get_outputs()]
            got = sess.run(None, feeds)
            if EXACT_BIN:
                got = exact_outputs(job["file"], feeds, names, got)
            res["metrics"] = [metric(g, data[f"output.{n}"], n) for n, g in zip(names, got)]
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=2)}"
        print(json.dumps(res), flush=True)


def main():
    if sys.argv[1] == "--npz":
        return main_npz(sys.argv[2])
    mdir, jobs_path = sys.argv[1], sys.argv[2]
    cases = {c["name"]: c for c in json.load(open(f"{mdir}/manifest.json"))}
    for job in json.load(open(jobs_path)):
        res = dict(job=job)
        try:
            case = cases[job["case"]]
            onnx.checker.check_model(job["file"], full_check=True)
            feeds = dict(np.load(f"{mdir}/{case['name']}.npz"))
            got, runtime, names = run_model(job["file"], feeds)
            if EXACT_BIN and runtime == "onnxruntime":
                got = exact_outputs(job["file"], feeds, names, got)
                runtime = "onnx-dynq (onnxruntime matched its emulation)"
            want = reference(mdir, case, feeds)
            if sorted(names) != sorted(want):
                raise ValueError(f"outputs {names} != reference {list(want)}")
            want = [want[n] for n in names]
            res["runtime"] = runtime
            res["dtypes"] = [str(g.dtype) for g in got]
            res["metrics"] = [metric(g, w, i) for i, (g, w) in enumerate(zip(got, want))]
        except Exception as e:  # noqa: BLE001
            res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=2)}"
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
