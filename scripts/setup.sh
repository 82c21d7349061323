#!/usr/bin/env bash
# Install everything a run or the tests need: Fashion-MNIST (Debian package, where apt exists),
# torch + torchvision, then requirements.txt (which installs this repository in editable mode).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
python3 -m pip install -q -r requirements.txt
