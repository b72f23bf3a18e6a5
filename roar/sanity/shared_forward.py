"""Explain every model of a randomisation order with the layers they share computed once.

The models of a model-randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018, section 4) differ only in which layer groups hold random weights. A layer's output
depends only on the input and on the weights of the groups below it, so in the top-down cascade
every step shares the forward pass of the unchanged bottom with the trained model (step 3 of
``small_cnn``'s cascade, conv3 and above randomised, reuses conv1 and conv2 as computed for step
0), as does every ``independent`` step; in ``bottom_up`` (Binder et al., arXiv 2211.12486, 2022)
each step shares the random bottom of the step before it.

How: the network is traced once with ``torch.fx`` (:mod:`roar.sanity.traced_graph`); each node
of the graph reads the weights of some groups (its own module's, and through its inputs those of
every group below it). A node's value is computed once per distinct *version* of those groups
(trained or randomised), and kept with its autograd graph, so every step's logit hangs off the
one input tensor and its input gradient is one ``torch.autograd.grad`` (``retain_graph``)
through the shared activations. The arithmetic is the model's own, op for op: the maps equal the
model-by-model maps within float tolerance (the tests check them against captum). Each group's
randomised weights are recorded once, when its step comes: they depend only on the seed and the
group's name (:mod:`roar.sanity.randomization`), so one trained and one random version per group
describe every step of every order.

The forward passes saved are what this buys; the backward passes are not shared (each step's
upstream gradient differs), so the saving is largest where the bottom is costly. Two rewrites
that keep the maps make each pass cheaper: ``max_pool(relu(x))`` runs as ``relu(max_pool(x))``
(:func:`roar.sanity.traced_graph.pool_before_relu`), and on a CPU conv nets run in
``channels_last`` layout, where oneDNN's pooling and first convolution are several times faster
(``benchmarks/sanity_mprt.py``).
``channels_last`` sums in another order: a max-pool window whose two largest values agree to
about 1e-7 may then route its gradient to the other pixel (the gradient is discontinuous
there), so the maps equal the model-by-model maps except at such near-ties.

A network that ``torch.fx`` cannot trace, or a method other than the gradient family of
:func:`roar.sanity.batched.can_stack`, is explained model by model as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call

from roar.sanity.batched import can_stack, method_maps
from roar.sanity.layer_groups import layer_groups
from roar.sanity.randomization import ORIGINAL, RandomizationStep
from roar.sanity.traced_graph import TracedGraph

State = dict[str, Tensor]

MAX_ROWS = 2048
"""Most input rows explained at once, summed over the steps, where the method sets no bound of its
own (IG's ``internal_batch_size``, an ensemble's ``max_batch_size``): bounds memory, as the cached
activations of several steps are alive together."""

can_share = can_stack
"""Whether :class:`SharedSteps` reproduces a method: the gradient family and its ensembles."""


def prefers_channels_last(network: nn.Module, device: torch.device) -> bool:
    """``channels_last`` for a network with 2-D convolutions on a CPU (measured faster there)."""
    return device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in network.modules())


class SharedSteps:
    """Records the steps of a randomisation order, then explains all of them with shared layers.

    Use: :meth:`record` each step as :func:`~roar.sanity.randomization.randomization_steps`
    yields it (step 0, the unrandomised copy, first), then :meth:`explain` each method. Built by
    :meth:`for_network`, which returns ``None`` where the network cannot be traced.
    """

    def __init__(self, network: nn.Module, graph: TracedGraph, groups: dict[str, list[str]], channels_last: bool) -> None:
        self.graph = graph
        self.groups = groups
        self.channels_last = channels_last
        self.steps: list[int] = []
        self.randomized: list[frozenset[str]] = []
        self.original: State = {}
        self.random: dict[str, State] = {}

    @classmethod
    def for_network(cls, network: nn.Module, channels_last: bool | None = None) -> SharedSteps | None:
        """The recorder for ``network`` (the copy the steps mutate), or ``None`` if ``torch.fx`` cannot trace it.

        Args:
            network: the randomised copy, at step 0.
            channels_last: run 4-D inputs in ``channels_last``; ``None``: :func:`prefers_channels_last`.
        """
        groups = {g.name: list(g.modules) for g in layer_groups(network)}
        try:
            graph = TracedGraph(network, groups)
        except Exception:  # noqa: BLE001 - any tracing failure means: explain model by model
            return None
        device = next(network.parameters()).device
        chosen = prefers_channels_last(network, device) if channels_last is None else channels_last
        return cls(network, graph, groups, chosen)

    def record(self, step: RandomizationStep) -> None:
        """Keep what ``step``'s weights are: the full trained state at step 0, else the group it randomised."""
        model, layout = step.model, _channels_last if self.channels_last else (lambda t: t)
        if step.layer == ORIGINAL:
            self.original = {k: layout(v) for k, v in _state(model, "").items()}
        elif step.layer not in self.random:
            self.random[step.layer] = {k: layout(v) for p in self.groups[step.layer] for k, v in _state(model, p).items()}
        if not self.original:
            raise ValueError("record step 0 (the unrandomised copy) first")
        self.steps.append(step.step)
        self.randomized.append(frozenset(step.randomized))

    def _weights(self, randomized: frozenset[str]) -> State:
        state = dict(self.original)
        for group in randomized:
            state.update(self.random[group])
        return state

    def explain(self, method: object, images: Tensor, target: Tensor, indices: Tensor) -> list[Tensor]:
        """The maps of ``method`` (one for which :data:`can_share` holds) at every recorded step, in order."""
        if not can_share(method):
            raise ValueError(f"{type(method).__name__} has no shared-layer path; explain it model by model")
        rows = max(1, _row_budget(method) // max(1, len(self.steps)))

        def input_grads(inputs: Tensor, t: Tensor) -> Tensor:
            """``(K, N, ...)``: every step's input gradient of its target logit, in chunks of rows."""
            return torch.cat([self._chunk(inputs[i : i + rows], t[i : i + rows]) for i in range(0, len(inputs), rows)], dim=1)

        return list(method_maps(method, input_grads, images, target, indices).unbind(0))

    def _chunk(self, inputs: Tensor, target: Tensor) -> Tensor:
        x = _channels_last(inputs.detach()) if self.channels_last else inputs.detach().clone()
        x.requires_grad_(True)
        memo: dict[tuple[fx.Node, frozenset[str]], object] = {}
        logits = [self._forward(x, randomized, memo) for randomized in self.randomized]
        grads = []
        for k, logit in enumerate(logits):
            selected = logit.gather(1, target.unsqueeze(1)).sum()
            (grad,) = torch.autograd.grad(selected, x, retain_graph=k < len(logits) - 1)
            grads.append(grad.contiguous())
        return torch.stack(grads)

    def _forward(self, x: Tensor, randomized: frozenset[str], memo: dict) -> Tensor:
        """One step's logits; a node already computed under the same versions of its groups is reused."""
        graph, env = self.graph, {}
        weights = None
        for node in graph.nodes:
            if node.op == "output":
                return fx.node.map_arg(node.args[0], env.__getitem__)
            key = (node, graph.deps[node] & randomized)
            if key in memo:
                env[node] = memo[key]
                continue
            if weights is None:
                weights = self._weights(randomized)
            env[node] = memo[key] = self._run(node, x, env, weights)
        raise RuntimeError("traced graph has no output")

    def _run(self, node: fx.Node, x: Tensor, env: dict, weights: State) -> object:
        if node.op == "placeholder":
            return x
        if node.op == "get_attr":
            target = str(node.target)
            return weights[target] if target in weights else _attr(self.graph.module, target)
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        call = self.graph.calls[node]
        if node.op == "call_function":
            kwargs = {**kwargs, "inplace": False} if kwargs.get("inplace") is True else kwargs
            return call(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], call)(*args[1:], **kwargs)
        prefix = f"{node.target}."
        local = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        return functional_call(call, local, args, kwargs) if local else call(*args, **kwargs)


def _row_budget(method: object) -> int:
    """The rows the method lets one model see at once (its own memory bound), else :data:`MAX_ROWS`."""
    bounds = []
    while method is not None:
        bounds += [b for b in (getattr(method, "internal_batch_size", None), getattr(method, "max_batch_size", None)) if b]
        method = getattr(method, "base", None)
    return min(bounds, default=MAX_ROWS)


def _state(model: nn.Module, prefix: str) -> State:
    """Detached copies of the parameters and buffers of ``model``'s submodule ``prefix`` (``""``: all), by qualified name."""
    module = model.get_submodule(prefix) if prefix else model
    head = f"{prefix}." if prefix else ""
    named = [*module.named_parameters(), *module.named_buffers()]
    return {head + name: t.detach().clone() for name, t in named}


def _channels_last(t: Tensor) -> Tensor:
    """A copy of a 4-D tensor in ``channels_last`` strides, also with one channel.

    ``Tensor.contiguous(memory_format=torch.channels_last)`` leaves a one-channel tensor (a grey
    image, the first conv's weight) as it is, and oneDNN then runs the whole network in NCHW;
    explicit strides make it choose NHWC. Other tensors are returned unchanged.
    """
    if t.dim() != 4:
        return t
    n, c, h, w = t.shape
    return torch.empty_strided(t.shape, (h * w * c, 1, w * c, c), dtype=t.dtype, device=t.device).copy_(t)


def _attr(module: nn.Module, target: str) -> object:
    for part in target.split("."):
        module = getattr(module, part)
    return module


def explain_steps(
    recorder: SharedSteps, methods: dict[str, object], names: Sequence[str], images: Tensor, target: Tensor, indices: Tensor
) -> dict[int, dict[str, Tensor]]:
    """``{step: {method: maps}}`` for the methods ``names`` over every step ``recorder`` holds."""
    out: dict[int, dict[str, Tensor]] = {step: {} for step in recorder.steps}
    for name in names:
        for step, maps in zip(recorder.steps, recorder.explain(methods[name], images, target, indices)):
            out[step][name] = maps
    return out
