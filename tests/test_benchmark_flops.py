"""The FLOP counting behind figure 7's bound: torch's formulas, through repeated backward passes."""

import torch
from torch import nn

from benchmarks.flops import count_flops, dense_ceiling


def test_counts_a_matmul_and_an_input_only_backward_walked_twice():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert count_flops(lambda: a @ b) == {"aten.mm": 2 * 3 * 4 * 5, "total": 2 * 3 * 4 * 5}

    conv = nn.Conv2d(2, 3, 3, padding=1).requires_grad_(False)
    x = torch.randn(4, 2, 6, 6, requires_grad=True)
    forward = 2 * 4 * 3 * 2 * 9 * 36  # batch x out x in x kernel x positions, two FLOPs per multiply-add

    def twice():
        y = conv(x).sum()
        torch.autograd.grad(y, x, retain_graph=True)  # the shared-layer cascade walks one graph several times
        torch.autograd.grad(y, x)

    counted = count_flops(twice)
    # Only the input gradient is asked for, so each backward costs one forward (no weight gradient).
    assert counted["aten.convolution"] == forward and counted["aten.convolution_backward"] == 2 * forward


def test_dense_ceiling_is_a_rate_a_cpu_can_have():
    assert 1e8 < dense_ceiling(torch.device("cpu"), repeats=1) < 1e13


def test_figure_7_counts_less_work_for_the_shared_cascade(run_benchmarks):
    code, results = run_benchmarks("--smoke", "--figures", "mprt")
    assert code == 0
    rows = {row["way"]: row for row in results["figures"]["mprt"]["rows"]}
    one_at_a_time = rows["ours, one model at a time (stack=1, share=False)"]["gflop"]
    shared = rows["ours, shared layers (stack=1, the default on CPU)"]["gflop"]
    # small_cnn's five groups: six models. One at a time, each is run forward and backward in full
    # (and the original twice); shared, the top-down cascade's trained bottoms run once.
    assert 0 < shared < 0.8 * one_at_a_time
