#!/usr/bin/env bash
# Wheels of roar's pure-Python dependencies that the GPU machines' image lacks (it has torch,
# lightning, timm, torchmetrics, scipy, matplotlib, rich: /work/.library/device/KINDS.md), for its
# Python 3.12, into .whl/ (ignored by git; carried with `carry: [".whl"]`). Run here, once per session.
# wandb is left out (a dozen more packages): figure 10 then runs with --set per_run.logger=csv.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    captum==0.9.0 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.14.0 \
    quantus==0.6.0 cachetools==8.0.2  # figures 7 and 8 compare against Quantus (it imports cachetools)
ls -la .whl
