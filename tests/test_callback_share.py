"""``share`` is an argument of ``ModelRandomizationCheck``, as the README's settings table says of
every sanity key but ``batchnorm`` (python -m roar sanity's ``sanity.share``): the same maps either way."""

from __future__ import annotations

import pytest

from callbacks import ModelRandomizationCheck
from roar.sanity.maps import model_randomization, select_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_share_reaches_the_check_and_leaves_the_similarities_unchanged(trained, digits):
    images, _, indices = select_batch(digits.split_dataset("val"), 4, seed=0)
    methods, metrics = ["gradient", "integrated_gradients"], ["spearman", "ssim"]
    params = {"integrated_gradients": {"n_steps": 8}}
    results = {}
    for share in (True, False):
        check = ModelRandomizationCheck(methods=methods, metrics=metrics, method_params=params, share=share, stack=1)
        (results[share],) = check.compute(None, trained, images, None, indices)
    direct = model_randomization(trained, images, "cascading", check.methods, metrics, indices=indices, method_params=params, stack=1, share=False)
    assert [(r.method, r.step, r.metric) for r in results[True].records] == [(r.method, r.step, r.metric) for r in results[False].records]
    for a, b, c in zip(results[True].records, results[False].records, direct.records):
        assert a.mean == pytest.approx(b.mean, abs=1e-4) and b.mean == pytest.approx(c.mean, abs=1e-6)
    with pytest.raises(ValueError, match="share must be true or false, got 'yes'"):
        ModelRandomizationCheck(share="yes")
