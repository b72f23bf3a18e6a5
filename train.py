"""Train a classifier: ``python train.py fit --config configs/digits.yaml``.

Thin on purpose: everything lives in :mod:`roar.cli`.
"""

from __future__ import annotations

from roar.cli import RoarCLI


def main(args: list[str] | None = None) -> RoarCLI:
    """Run the LightningCLI; ``args`` lets tests drive it without a subprocess."""
    return RoarCLI(args=args)


if __name__ == "__main__":
    main()
