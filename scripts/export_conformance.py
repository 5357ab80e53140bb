#!/usr/bin/env python3
"""Exports the ONNX backend node test cases as files for the Rust conformance test.

Usage: export_conformance.py OUTDIR [--ops Op1,Op2,...] [--raw-tensor-data]

The cases ship inside the `onnx` wheel as code (`onnx.backend.test.case.node`), not as data
files. For each case this writes

    OUTDIR/<case name>/model.onnx
    OUTDIR/<case name>/input_<i>.pb, output_<i>.pb   (TensorProto, graph input/output order;
                                                      data set d > 0 uses input_<d>_<i>.pb)
    OUTDIR/<case name>/meta.json                     ({"rtol":..,"atol":..,"data_sets":n})

Cases whose data hold sequences, optionals or maps are skipped (the runtime executes tensors
only). By default so are the 189 cases whose data the wheel gives as raw TensorProtos (the
Cast/CastLike cases and the float8/int4 Quantize/DequantizeLinear ones, types numpy has no
dtype for): the default export is the 1,669-case suite tests/conformance.rs measures.
--raw-tensor-data writes them too, for work on those element types (float8, int4, int2 and
float4 are not stored by the runtime yet). With --ops, only cases whose model (subgraphs
included) uses just those op types are written; by default all are, and the Rust side filters by what the runtime registers. A file
`OUTDIR/.complete` marks a finished export.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases


def graph_ops(g, acc):
    for n in g.node:
        acc.add(n.op_type)
        for a in n.attribute:
            if a.HasField("g"):
                graph_ops(a.g, acc)
            for sg in a.graphs:
                graph_ops(sg, acc)
    return acc


def is_tensor(v, raw):
    # Cases of types numpy has no dtype for (bfloat16, float8, int4, ...) give TensorProtos.
    if raw and isinstance(v, onnx.TensorProto):
        return True
    return isinstance(v, np.ndarray) or np.isscalar(v)


def tensor_bytes(v):
    if isinstance(v, onnx.TensorProto):
        return v.SerializeToString()
    return numpy_helper.from_array(np.asarray(v)).SerializeToString()


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    out = args[0]
    ops = None
    if "--ops" in args:
        ops = set(args[args.index("--ops") + 1].split(","))
    raw = "--raw-tensor-data" in args
    os.makedirs(out, exist_ok=True)
    written = skipped = 0
    for case in collect_testcases(None):
        if ops is not None and not graph_ops(case.model.graph, set()) <= ops:
            continue
        data_sets = case.data_sets or []
        if not data_sets or not all(
            all(is_tensor(v, raw) for v in list(i) + list(o)) for i, o in data_sets
        ):
            skipped += 1
            continue
        d = os.path.join(out, case.name)
        os.makedirs(d, exist_ok=True)
        try:
            with open(os.path.join(d, "model.onnx"), "wb") as f:
                f.write(case.model.SerializeToString())
            for k, (inputs, outputs) in enumerate(data_sets):
                prefix = "" if k == 0 else f"{k}_"
                for i, v in enumerate(inputs):
                    with open(os.path.join(d, f"input_{prefix}{i}.pb"), "wb") as f:
                        f.write(tensor_bytes(v))
                for i, v in enumerate(outputs):
                    with open(os.path.join(d, f"output_{prefix}{i}.pb"), "wb") as f:
                        f.write(tensor_bytes(v))
        except Exception as e:  # dtypes numpy_helper cannot write (e.g. some float8 forms)
            print(f"skip {case.name}: {e}", file=sys.stderr)
            for fn in os.listdir(d):
                os.remove(os.path.join(d, fn))
            os.rmdir(d)
            skipped += 1
            continue
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(
                {
                    "rtol": float(case.rtol),
                    "atol": float(case.atol),
                    "data_sets": len(data_sets),
                },
                f,
            )
        written += 1
    with open(os.path.join(out, ".complete"), "w") as f:
        f.write(f"{written}\n")
    print(f"exported {written} cases to {out} ({skipped} skipped: non-tensor data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
