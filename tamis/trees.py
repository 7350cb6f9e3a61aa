"""Gradient-boosted trees as a teacher: scikit-learn's HistGradientBoosting, evaluated in torch.

On many tables boosted trees beat an MLP, so ``train`` fits one beside the MLP
and keeps whichever (or whichever blend) scores best. The fitted trees are
copied into :class:`Forest`, a torch module of plain tensors. It takes the same
encoded ``(num, cat)`` rows as the MLP and gives the same raw scores as
scikit-learn (parity is tested), so calibrate, distill and evaluate treat every
teacher alike, and a pickle of a fitted estimator is never shipped. The trees
run as one ``ai.onnx.ml`` ``TreeEnsemble`` node: in the exported graph
(:func:`as_tree_ensembles`) and, on CPU, in torch too (onnxruntime's tree
kernel, 15-100x faster than walking every tree at once as tensor ops, which
is what runs on a GPU).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

MAX_CATEGORIES = 255  # HistGradientBoosting's native categorical support stops here (a bigger one is a number)


def hgb_inputs(num: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """The one float matrix the trees see: numeric columns, then category codes."""
    return np.hstack([num, cat.astype(np.float32)]).astype(np.float32)


def categorical_mask(n_num: int, cardinalities: list[int]) -> list[bool]:
    return [False] * n_num + [k <= MAX_CATEGORIES for k in cardinalities]


def _at_most(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 ``t`` with ``t <= threshold``: for float32 ``x``, ``x <= t`` iff ``x <= threshold``."""
    t32 = threshold.astype(np.float32)
    up = t32.astype(np.float64) > threshold
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    return t32


def _bits(bitsets: np.ndarray) -> np.ndarray:
    """uint32[n, 8] bitsets (256 categories each) as bool[n, 256]."""
    words = np.asarray(bitsets, dtype=np.uint32).reshape(-1, 8)
    return ((words[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).reshape(-1, 256)


def ordered(num: torch.Tensor, cat: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The rows as the trees read them: numeric columns, then category codes, in the fitted model's column order."""
    return torch.cat([num, cat.to(num.dtype)], dim=1)[:, order]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class Forest(nn.Module):
    """The first ``n_iter`` boosting iterations of a fitted HistGradientBoostingClassifier, as tensors.

    Every tree's nodes are concatenated. On CPU onnxruntime's tree kernel scores
    the rows (:meth:`onnx_node`); elsewhere (:meth:`walk`) a row's position in each
    tree starts at the tree's root and moves one level per step, for as many steps
    as the deepest tree has levels (a leaf stays where it is). Numeric splits go left
    when ``x <= threshold``; categorical ones when the code is in the split's
    left set, and a code the trees never saw goes the split's missing-value
    way, as in scikit-learn. Binary models get logits ``[0, raw]``.
    """

    def __init__(self, arrays: dict[str, np.ndarray], arch: dict[str, Any]):
        super().__init__()
        self.arch = dict(arch)
        self.depth = int(arch["depth"])
        self.n_classes = int(arch["n_classes"])
        for name, value in arrays.items():
            self.register_buffer(name, torch.as_tensor(value))
        self.register_buffer("logit_adjustment", torch.zeros(self.n_classes))
        self._walk_tables()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._walk_tables())

    @classmethod
    def empty(cls, arch: dict[str, Any]) -> Forest:
        """A forest of the right shapes for ``load_state_dict`` (a saved checkpoint)."""
        m, t, f = arch["nodes"], arch["trees"], arch["n_features"]
        arrays = {
            "feature": np.zeros(m, np.int64), "threshold": np.zeros(m, np.float32),
            "left": np.zeros(m, np.int64), "right": np.zeros(m, np.int64), "leaf": np.zeros(m, bool),
            "value": np.zeros(m, np.float32), "missing_left": np.zeros(m, bool), "cat_row": np.zeros(m, np.int64),
            "left_bits": np.zeros(arch["left_sets"] * 256, bool), "known_bits": np.zeros(f * 256, bool),
            "order": np.zeros(f, np.int64), "recode": np.zeros(f * 256, np.int64),
            "roots": np.zeros(t, np.int64), "tree_class": np.zeros((t, arch["n_classes"]), np.float32),
            "baseline": np.zeros(arch["n_classes"], np.float32),
        }
        return cls(arrays, arch)

    @classmethod
    def from_sklearn(cls, model: Any, n_iter: int | None = None) -> Forest:
        predictors = model._predictors[: n_iter or len(model._predictors)]
        n_features = int(model.n_features_in_)
        order, recode = _preprocessing(model, n_features)
        known, f_map = model._bin_mapper.make_known_categories_bitsets()
        is_cat = np.asarray(model._bin_mapper.is_categorical_, dtype=bool)
        known_bits = np.zeros((n_features, 256), bool)
        known_bits[is_cat] = _bits(known)[f_map[is_cat]]
        per_iter = len(predictors[0])
        n_classes = 2 if per_iter == 1 else per_iter
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("feature", "threshold", "left", "right", "leaf", "value",
                                                                "missing_left", "cat_row", "left_bits")}
        roots, tree_class, offset, sets, depth = [], [], 0, 0, 1
        for trees in predictors:
            for k, tree in enumerate(trees):
                nodes = tree.nodes
                roots.append(offset)
                tree_class.append(1 if per_iter == 1 else k)
                parts["feature"].append(nodes["feature_idx"].astype(np.int64))
                parts["threshold"].append(_at_most(nodes["num_threshold"].astype(np.float64)))
                parts["left"].append(nodes["left"].astype(np.int64) + offset)
                parts["right"].append(nodes["right"].astype(np.int64) + offset)
                parts["leaf"].append(nodes["is_leaf"].astype(bool))
                parts["value"].append(nodes["value"].astype(np.float32))
                parts["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
                cat_node = nodes["is_categorical"].astype(bool) & ~nodes["is_leaf"].astype(bool)
                parts["cat_row"].append(np.where(cat_node, nodes["bitset_idx"].astype(np.int64) + sets, -1))
                parts["left_bits"].append(_bits(tree.raw_left_cat_bitsets))
                sets += len(tree.raw_left_cat_bitsets)
                depth = max(depth, int(nodes["depth"].max()))
                offset += len(nodes)
        baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        arrays["left_bits"] = np.concatenate([arrays["left_bits"].reshape(-1, 256), np.zeros((1, 256), bool)]).ravel()
        arrays.update(
            order=order,
            recode=recode.ravel(),
            known_bits=known_bits.ravel(),
            roots=np.asarray(roots, np.int64),
            tree_class=np.eye(n_classes, dtype=np.float32)[tree_class],
            baseline=(np.array([0.0, baseline[0]]) if per_iter == 1 else baseline).astype(np.float32),
        )
        arch = dict(kind="forest", n_classes=n_classes, n_features=n_features, trees=len(roots),
                    nodes=offset, left_sets=sets + 1, depth=depth, iterations=len(predictors))
        return cls(arrays, arch)

    @property
    def max_batch(self) -> int:
        """Rows per call that keep each step's rows x trees tensors near 1 MiB: on 490 trees, 2,048 rows a call
        took twice as long per row as 256 (cache misses in the lookups)."""
        return max(16, 2**17 // max(1, self.arch["trees"]))

    def _walk_tables(self) -> None:
        """What the walk reads, derived from the saved arrays (so a checkpoint keeps its format): each node's two
        children in one array (a leaf is its own child, so no step needs to ask whether it is at a leaf), each
        categorical split's way for every code 0-255 in one row (the unseen-code and missing-value rules folded in).
        A step is then four lookups and a comparison (and two more lookups where a split is categorical)."""
        leaf, node_ids = _numpy(self.leaf), np.arange(len(self.leaf))
        child = np.stack([np.where(leaf, node_ids, _numpy(self.left)), np.where(leaf, node_ids, _numpy(self.right))], 1)
        cat_row = _numpy(self.cat_row)
        nodes = np.flatnonzero(cat_row >= 0)
        self.has_categorical = bool(len(nodes))
        go_left = np.zeros((self.arch["left_sets"], 256), bool)
        if self.has_categorical:
            f = _numpy(self.feature)[nodes]
            code = _numpy(self.recode).reshape(-1, 256)[f]  # [nodes, 256]: each raw code's rank, -1 if never seen
            known = (code >= 0) & _numpy(self.known_bits).reshape(-1, 256)[f[:, None], code.clip(0)]
            in_left = _numpy(self.left_bits).reshape(-1, 256)[cat_row[nodes][:, None], code.clip(0)]
            go_left[cat_row[nodes]] = (known & in_left) | (~known & _numpy(self.missing_left)[nodes, None])
        for name, value in (("child", child.ravel()), ("cat_go_left", go_left.ravel())):
            self.register_buffer(name, torch.as_tensor(value, device=self.leaf.device), persistent=False)
        self._kernel = None  # (threads, onnxruntime session), built on first use

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_kernel": None}  # a session neither pickles nor deep-copies

    def onnx_node(self, inp: str, out: str, name: str) -> Any:
        """This forest as one ``ai.onnx.ml`` ``TreeEnsemble`` node: ``inp`` (rows in :attr:`order`) -> the trees' summed
        values per class (no baseline). Numeric splits go left (true) when ``x <= threshold``; categorical ones when
        the code is in the split's left set (``cat_go_left``); a one-leaf tree gets a split that always goes left."""
        from onnx import helper, numpy_helper

        leaf, child, cat_row = _numpy(self.leaf), _numpy(self.child).reshape(-1, 2), _numpy(self.cat_row)
        roots = _numpy(self.roots)
        inner, leaves = np.flatnonzero(~leaf), np.flatnonzero(leaf)
        lone = roots[leaf[roots]]  # one-leaf trees
        index = np.full(len(leaf), -1)
        index[inner], index[leaves] = np.arange(len(inner)), np.arange(len(leaves))
        index[lone] = len(inner) + np.arange(len(lone))  # their roots: the always-left splits after the real ones
        left = np.concatenate([child[inner, 0], lone])
        right = np.concatenate([child[inner, 1], lone])
        is_cat = np.concatenate([cat_row[inner] >= 0, np.zeros(len(lone), bool)])
        splits = np.concatenate([np.where(is_cat[: len(inner)], 0, _numpy(self.threshold)[inner]),
                                 np.full(len(lone), np.inf)]).astype(np.float32)
        go_left = _numpy(self.cat_go_left).reshape(-1, 256)
        members = [v for n in inner[cat_row[inner] >= 0] for v in [*np.flatnonzero(go_left[cat_row[n]]), np.nan]]
        tree_of = np.repeat(np.arange(len(roots)), np.diff(np.append(roots, len(leaf))))
        ends = lambda kids: ([int(index[c]) for c in kids], [int(leaf[c]) for c in kids])
        (true_ids, true_leafs), (false_ids, false_leafs) = ends(left), ends(right)
        return helper.make_node(
            "TreeEnsemble", [inp], [out], name=name, domain="ai.onnx.ml",
            aggregate_function=1, post_transform=0, n_targets=self.n_classes,  # sum, as is
            tree_roots=[int(index[r]) for r in roots],
            nodes_featureids=[int(f) for f in np.concatenate([_numpy(self.feature)[inner], np.zeros(len(lone), int)])],
            nodes_splits=numpy_helper.from_array(splits),
            nodes_modes=numpy_helper.from_array(np.where(is_cat, 6, 0).astype(np.uint8)),  # BRANCH_MEMBER | BRANCH_LEQ
            nodes_truenodeids=true_ids, nodes_trueleafs=true_leafs,
            nodes_falsenodeids=false_ids, nodes_falseleafs=false_leafs,
            nodes_missing_value_tracks_true=[0] * len(left),  # NaN goes right, as ``~(v <= threshold)`` does
            leaf_targetids=[int(k) for k in _numpy(self.tree_class).argmax(1)[tree_of[leaves]]],
            leaf_weights=numpy_helper.from_array(_numpy(self.value)[leaves].astype(np.float32)),
            **({"membership_values": numpy_helper.from_array(np.asarray(members, np.float32))} if members else {}),
        )

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """On CPU, onnxruntime's tree kernel (the node the ONNX export ships, 10x the walk's speed); on a GPU, or
        while torch traces the module, the walk."""
        if num.device.type == "cpu" and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            return self.tree_kernel(num, cat)
        return self.walk(num, cat)

    def tree_kernel(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if self._kernel is None or self._kernel[0] != threads:
            import onnxruntime as ort
            from onnx import TensorProto, helper

            n = self.arch["n_features"]
            graph = helper.make_graph(
                [self.onnx_node("x", "raw", "forest")], "forest",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["N", self.n_classes])],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 5)])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
            self._kernel = (threads, ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]))
        x = ordered(num, cat, self.order).detach().to(torch.float32).numpy()
        raw = torch.from_numpy(self._kernel[1].run(None, {"x": x})[0])
        return raw + self.baseline + self.logit_adjustment

    def walk(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """Every tree at once, one level per step, as tensor ops (any device)."""
        x = ordered(num, cat, self.order)
        node = self.roots.unsqueeze(0).expand(x.shape[0], -1)
        for _ in range(self.depth):
            v = x.gather(1, self.feature[node])
            go_right = ~(v <= self.threshold[node])
            if self.has_categorical:
                row = self.cat_row[node]
                cat_left = self.cat_go_left[row.clamp(min=0) * 256 + v.clamp(0, 255).to(torch.int64)]
                is_cat = row >= 0
                go_right = (is_cat & ~cat_left) | (~is_cat & go_right)  # bool logic: ORT has no bool Where
            node = self.child[node * 2 + go_right.to(torch.int64)]
        return self.value[node] @ self.tree_class + self.baseline + self.logit_adjustment


class ForestInputs(nn.Module):
    """A forest's stand-in while exporting: its inputs in its column order times a marker matrix, plus its
    baseline. :func:`as_tree_ensembles` then swaps the MatMul that reads the marker for the forest's TreeEnsemble."""

    def __init__(self, forest: Forest, marker: torch.Tensor):
        super().__init__()
        self.forest = [forest]  # not a submodule: its buffers stay out of the exported graph
        self.register_buffer("order", forest.order.clone())
        self.register_buffer("marker", marker)
        self.register_buffer("offset", (forest.baseline + forest.logit_adjustment).clone())

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        x = ordered(num, cat, self.order)
        return x @ self.marker + self.offset


def with_forest_inputs(model: nn.Module) -> tuple[nn.Module, list[ForestInputs]]:
    """A copy of ``model`` whose forests are :class:`ForestInputs` (each with its own random marker); ``model`` itself
    where it has no forest."""
    if not any(isinstance(m, Forest) for m in model.modules()):
        return model, []
    model = copy.deepcopy(model)
    stubs = []
    for name, module in list(model.named_modules()):
        if isinstance(module, Forest):
            parent, _, child = name.rpartition(".")
            marker = torch.rand(module.arch["n_features"], module.n_classes, generator=torch.Generator().manual_seed(len(stubs)))
            stubs.append(ForestInputs(module, marker + len(stubs)))
            if child:
                model.get_submodule(parent)._modules[child] = stubs[-1]
            else:
                model = stubs[-1]
    return model, stubs


def as_tree_ensembles(proto: Any, stubs: list[ForestInputs]) -> None:
    """Replace, in an exported graph, each stub's MatMul by its forest's TreeEnsemble node (in place)."""
    from onnx import helper, numpy_helper

    if not stubs:
        return
    by_name = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    nodes = list(proto.graph.node)
    for k, stub in enumerate(stubs):
        marker = stub.marker.numpy()
        names = {n for n, a in by_name.items() if a.shape == marker.shape and np.array_equal(a, marker)}
        (i, node), = [(i, n) for i, n in enumerate(nodes) if n.op_type == "MatMul" and n.input[1] in names]
        nodes[i] = stub.forest[0].onnx_node(node.input[0], node.output[0], f"forest_{k}")
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    used = {name for n in nodes for name in n.input}
    keep = [init for init in proto.graph.initializer if init.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    if not any(o.domain == "ai.onnx.ml" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 5))


def _preprocessing(model: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(column order, code map) of scikit-learn's input step: categorical columns first, each category code
    mapped to its rank among the codes seen in fit (-1 for one never seen: it takes the missing-value way)."""
    recode = np.full((n_features, 256), -1, np.int64)
    pre = getattr(model, "_preprocessor", None)
    if pre is None:
        return np.arange(n_features), recode
    is_cat = np.asarray(model.is_categorical_, dtype=bool)
    order = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)])
    for j, seen in enumerate(pre.named_transformers_["encoder"].categories_):
        seen = np.asarray(seen, dtype=np.float64)
        seen = seen[~np.isnan(seen)].astype(np.int64)
        recode[j, seen[(seen >= 0) & (seen < 256)]] = np.arange(len(seen))[(seen >= 0) & (seen < 256)]
    return order, recode


def fit_hgb(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None, categorical: list[bool], n_classes: int,
            max_iter: int, learning_rate: float, max_leaf_nodes: int, seed: int) -> Any:
    """A HistGradientBoostingClassifier on every row (no internal split: the calib split picks the iteration)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
        categorical_features=categorical, early_stopping=False, random_state=seed,
    )
    return model.fit(x, y, sample_weight=weight)


def staged_scores(model: Any, x: np.ndarray, y: np.ndarray, n_classes: int) -> list[dict[str, float]]:
    """Macro-F1 and NLL on ``(x, y)`` after each boosting iteration (the trees' early stopping, like the MLP's)."""
    from sklearn.metrics import f1_score

    out = []
    for probs in model.staged_predict_proba(x):
        p = np.clip(probs[np.arange(len(y)), y], 1e-12, None)
        f1 = f1_score(y, probs.argmax(1), labels=range(n_classes), average="macro", zero_division=0)
        out.append({"macro_f1": float(f1), "nll": float(-np.log(p).mean())})
    return out


class Blend(nn.Module):
    """A mixture of teachers: logits = log(sum_i w_i softmax(z_i)) (an arithmetic mix of their probabilities)."""

    def __init__(self, members: list[nn.Module], weights: list[float]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("log_weights", torch.log(torch.as_tensor(weights, dtype=torch.float32).clamp_min(1e-12)))
        self.arch = dict(kind="blend", weights=list(map(float, weights)), members=[m.arch for m in members])

    @property
    def max_batch(self) -> int:
        return min(getattr(m, "max_batch", 8192) for m in self.members)

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = [torch.log_softmax(m(num, cat), dim=1) + w for m, w in zip(self.members, self.log_weights)]
        return torch.logsumexp(torch.stack(parts), dim=0)
