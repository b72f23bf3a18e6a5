"""A user's code is fingerprinted with the local helpers it imports (issue "Trustworthy results").

Real packages written to a temporary folder and imported by name, as a user's package would be.
"""

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from roar.fingerprint import source_sha256
from roar.source_files import own_source_files


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def package(tmp_path, monkeypatch):
    """userpkg: saliency.py -> filters.py (relative import) -> sub/consts.py (absolute, inside a function); unused.py imported by nobody."""
    root = tmp_path / "src"
    write(root / "userpkg/__init__.py", "")
    write(root / "userpkg/saliency.py", """\
        import numpy as np
        import torch
        from .filters import smooth

        def explain(model, inputs, target):
            return smooth(inputs)
    """)
    write(root / "userpkg/filters.py", """\
        def smooth(x):
            import userpkg.sub.consts
            return x * userpkg.sub.consts.SCALE
    """)
    write(root / "userpkg/sub/__init__.py", "")
    write(root / "userpkg/sub/consts.py", "SCALE = 2.0\n")
    write(root / "userpkg/unused.py", "X = 1\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [n for n in sys.modules if n == "userpkg" or n.startswith("userpkg.")]:
        del sys.modules[name]


def test_the_files_are_the_module_its_package_and_its_local_imports_not_installed_ones(package):
    explain = importlib.import_module("userpkg.saliency").explain
    files = own_source_files(explain.__module__)
    assert sorted(files) == ["userpkg", "userpkg.filters", "userpkg.saliency", "userpkg.sub", "userpkg.sub.consts"]
    assert all(Path(f).is_relative_to(package) for f in files.values())  # not numpy's, torch's or roar's


def test_editing_a_helper_changes_the_fingerprint_and_an_unused_module_does_not(package):
    explain = importlib.import_module("userpkg.saliency").explain
    first = source_sha256(explain)
    (package / "userpkg/unused.py").write_text("X = 2\n")
    assert source_sha256(explain) == first
    (package / "userpkg/sub/consts.py").write_text("SCALE = 3.0\n")  # two imports away, inside a function
    second = source_sha256(explain)
    assert second != first
    (package / "userpkg/sub/consts.py").write_text("SCALE = 2.0\n")
    assert source_sha256(explain) == first


def test_a_module_without_local_imports_keeps_its_files_sha256(tmp_path, monkeypatch):
    import hashlib

    write(tmp_path / "lonely_method.py", "import torch\n\ndef explain(model, inputs, target):\n    return inputs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    explain = importlib.import_module("lonely_method").explain
    try:
        # Fingerprints recorded before helpers were followed stay valid for a single-file method.
        assert source_sha256(explain) == hashlib.sha256((tmp_path / "lonely_method.py").read_bytes()).hexdigest()
    finally:
        del sys.modules["lonely_method"]
