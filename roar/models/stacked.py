"""Several networks of one architecture trained as one batched model (``torch.func``).

A small network (the MNIST CNN of Adebayo et al. 2018, a ResNet18 at 32 px) leaves a device
mostly idle, and the ROAR grid (Hooker et al., NeurIPS 2019) retrains the same architecture many
times: every seed of every (method, threshold, mode) cell. :class:`StackedNetworks` holds the
parameters and buffers of N such networks stacked along a leading member dimension
(``torch.func.stack_module_state``) and runs them with ``vmap`` over ``functional_call``: one
call, N independent networks, each on its own batch (or, where batched kernels do not pay, a
loop of ``functional_call`` over the members' slices: one optimiser step and one loop still).

Why this is exact: member ``i``'s output depends only on member ``i``'s parameters and input, so
the gradient of the summed loss with respect to member ``i``'s slice is that member's own
gradient; SGD (momentum, Nesterov, weight decay) and AdamW update each element on its own, so an
optimiser over the stacked tensors takes each member's own step. BatchNorm's running statistics
are stacked buffers, updated in place per member under ``vmap``. What differs is only the
floating-point order of the batched kernels (a grouped convolution instead of N single ones).

Random operations inside the forward (dropout, stochastic depth) are refused by ``vmap``
(``randomness="error"``): their draws could not follow each member's own random stream.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class StackedNetworks:
    """N networks of one architecture as stacked tensors, evaluated in one ``vmap``'d call.

    Args:
        networks: the members, built alike (same parameter and buffer names and shapes); their
            current values become the stacked ones (they are copied, not shared).
        vectorize: one ``vmap``'d call for all members (batched kernels: fills a GPU), or a loop
            of ``functional_call`` over member slices (each member's own kernels, as trained
            alone: on one CPU thread a grouped convolution is slower than N single ones, see
            ``benchmarks/stacked_training.py``). None: ``vmap`` on CUDA, the loop elsewhere.

    Attributes:
        params: ``{name: (N, *shape) leaf tensor requiring grad}``, in ``named_parameters`` order.
        buffers: ``{name: (N, *shape) tensor}`` (BatchNorm running statistics, per member).
    """

    def __init__(self, networks: Sequence[nn.Module], vectorize: bool | None = None) -> None:
        networks = list(networks)
        if not networks:
            raise ValueError("a stack needs at least one network")
        first = {k: (tuple(v.shape), v.dtype) for k, v in networks[0].state_dict().items()}
        for i, net in enumerate(networks[1:], 1):
            theirs = {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}
            if theirs != first:
                raise ValueError(f"network {i} differs from network 0 in its parameters or buffers; only networks of one architecture stack")
        params, buffers = stack_module_state(networks)
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        self.size = len(networks)
        # The structure without storage: functional_call supplies each member's tensors.
        self.skeleton = copy.deepcopy(networks[0]).to("meta")
        self.vectorize = vectorize
        self._vmapped = vmap(self._member_forward, in_dims=(0, 0, 0), randomness="error")

    def _member_forward(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.skeleton, (params, buffers), (x,))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, B, ...)`` inputs, member ``i`` on ``x[i]`` -> ``(N, B, num_classes)`` logits."""
        if x.shape[0] != self.size:
            raise ValueError(f"inputs stack {x.shape[0]} batches for {self.size} networks")
        vectorize = self.vectorize if self.vectorize is not None else x.device.type == "cuda"
        if vectorize:
            return self._vmapped(self.params, self.buffers, x)
        # Slices are views: gradients reach the stacked leaves, BatchNorm updates the stacked buffers in place.
        return torch.stack([
            self._member_forward({k: v[i] for k, v in self.params.items()}, {k: v[i] for k, v in self.buffers.items()}, x[i])
            for i in range(self.size)
        ])  # fmt: skip

    def train(self, mode: bool = True) -> StackedNetworks:
        """Training or evaluation behaviour (BatchNorm batch statistics, and their running update)."""
        self.skeleton.train(mode)
        return self

    def eval(self) -> StackedNetworks:
        return self.train(False)

    def to(self, device: torch.device | str) -> StackedNetworks:
        """Move the stacked tensors (parameters stay leaf tensors requiring grad)."""
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def named_parameters(self):
        """``(name, stacked tensor)`` pairs: what an optimiser over the whole stack steps."""
        return iter(self.params.items())

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s ``state_dict`` (copies): load it into a network of the architecture."""
        if not 0 <= i < self.size:
            raise IndexError(f"member {i} of a stack of {self.size}")
        return {k: v[i].detach().clone() for k, v in {**self.params, **self.buffers}.items()}
