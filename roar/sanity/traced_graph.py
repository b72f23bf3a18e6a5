"""The network of a model-randomisation test traced with ``torch.fx``, ready to share layers between steps.

The models of a model-randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018, section 4) differ only in which layer groups hold random weights, so a layer's
output can be computed once per version of the groups below it
(:mod:`roar.sanity.shared_forward`). That needs the network as a graph of ops rather than an
opaque ``forward``: :class:`TracedGraph` traces it once and records, for every node, the groups
whose weights it reads (its own module's and, through its inputs, every group below it), and an
out-of-place callable for it, because a cached activation shared by several steps must never be
overwritten.

Tracing is also where the graph is rewritten for speed without changing the maps:
:func:`pool_before_relu` runs ``max_pool(relu(x))`` as ``relu(max_pool(x))``. The evaluation
itself (weights per step, memo of shared activations, input gradients) is
:class:`roar.sanity.shared_forward.SharedSteps`; this module knows nothing of steps or methods.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import Tensor, fx, nn

_INPLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv}  # fmt: skip


class TracedGraph:
    """The traced network: its nodes, the groups each node reads, and out-of-place versions of in-place ops.

    Cached activations are shared between steps, so no op may write into one: ``x += y``,
    ``x.add_(y)``, ``relu(inplace=True)`` (timm's ResNets use the first and the last) run out of
    place. That is exact only where nothing reads the overwritten input after the op (the graph
    does not record what a mutation changes); a network that does is not shared (``TypeError``).
    """

    def __init__(self, network: nn.Module, groups: dict[str, list[str]]) -> None:
        self.module = fx.symbolic_trace(network)
        pool_before_relu(self.module)
        self.nodes = list(self.module.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise TypeError(f"forward takes {len(placeholders)} inputs; shared layers need exactly one")
        self.deps: dict[fx.Node, frozenset[str]] = {}
        self.calls: dict[fx.Node, object] = {}
        position = {node: i for i, node in enumerate(self.nodes)}
        for node in self.nodes:
            direct = {g for g, prefixes in groups.items() for p in prefixes if _overlaps(str(node.target), p)} \
                if node.op in ("call_module", "get_attr") else set()  # fmt: skip
            self.deps[node] = frozenset(direct).union(*(self.deps[i] for i in node.all_input_nodes))
            self.calls[node], in_place = self._callable(node)
            overwritten = node.args[0] if in_place and node.args and isinstance(node.args[0], fx.Node) else None
            if overwritten is not None and any(position[u] > position[node] for u in overwritten.users):
                raise TypeError(f"{node.name} overwrites {overwritten.name}, which is read again after it")

    def _callable(self, node: fx.Node) -> tuple[object, bool]:
        """What runs ``node``, out of place, and whether the traced op was in place."""
        if node.op == "call_module":
            module = self.module.get_submodule(str(node.target))
            if getattr(module, "inplace", False) is True:
                module = copy.copy(module)
                module.inplace = False
                return module, True
            return module, False
        if node.op == "call_function":
            if node.target in _INPLACE_FUNCTIONS:
                return _INPLACE_FUNCTIONS[node.target], True
            name = getattr(node.target, "__name__", "")
            if name.endswith("_") and not name.startswith("_"):  # torch.relu_, F.relu_
                source = torch.nn.functional if getattr(torch.nn.functional, name, None) is node.target else torch
                if not callable(getattr(source, name[:-1], None)):
                    raise TypeError(f"no out-of-place version of {name}")
                return getattr(source, name[:-1]), True
            return node.target, node.kwargs.get("inplace") is True
        if node.op == "call_method":
            name = str(node.target)
            if name.endswith("_") and not name.startswith("_"):
                if not hasattr(Tensor, name[:-1]):
                    raise TypeError(f"no out-of-place version of Tensor.{name}")
                return name[:-1], True
            return name, False
        return None, False


def _kind(module: fx.GraphModule, node: fx.Node) -> str | None:
    """``relu`` or ``max_pool`` for the ops :func:`pool_before_relu` may swap, else ``None``."""
    if node.op == "call_module":
        sub = module.get_submodule(str(node.target))
        if type(sub) is nn.ReLU:
            return "relu"
        if type(sub) is nn.MaxPool2d and not sub.return_indices:
            return "max_pool"
    if node.op == "call_function" and node.target in (torch.relu, torch.nn.functional.relu) and not node.kwargs.get("inplace"):
        return "relu" if len(node.args) == 1 else None
    if node.op == "call_method" and node.target == "relu" and len(node.args) == 1:
        return "relu"
    if node.op == "call_function" and node.target is torch.nn.functional.max_pool2d and not node.kwargs.get("return_indices"):
        return "max_pool" if len(node.args) < 7 else None
    return None


def pool_before_relu(module: fx.GraphModule) -> None:
    """Rewrite ``max_pool(relu(x))`` as ``relu(max_pool(x))``: the same values and input gradient.

    ReLU is monotonic, so the window maxima agree, and so do the pixels the gradient reaches: a
    window with a positive maximum routes it to the same (first) largest pixel, one without sends
    no gradient either way. The ReLU and its backward then touch a quarter of the values
    (for 2x2 pooling); ``small_cnn`` pools after each of its two large convolutions.
    """
    graph = module.graph
    for pool in list(graph.nodes):
        relu = pool.args[0] if pool.args and isinstance(pool.args[0], fx.Node) else None
        if _kind(module, pool) != "max_pool" or relu is None or _kind(module, relu) != "relu" or len(relu.users) != 1:
            continue
        with graph.inserting_after(pool):
            moved = graph.create_node(relu.op, relu.target, (pool,), dict(relu.kwargs), name=f"{relu.name}_pooled")
        pool.replace_all_uses_with(moved, delete_user_cb=lambda user: user is not moved)
        pool.args = (relu.args[0], *pool.args[1:])
        graph.erase_node(relu)
    graph.lint()
    module.recompile()


def _overlaps(target: str, prefix: str) -> bool:
    """Whether module/attribute ``target`` lies inside module ``prefix`` or contains it."""
    return target == prefix or target.startswith(prefix + ".") or prefix.startswith(target + ".")
