#!/usr/bin/env bash
# Debian's chromium + chromium-driver for the end-to-end test of `gzmorph serve` (tests/test_serve.py). A test tool's
# own browser download (e.g. `playwright install`) does not work on machines without internet; apt does.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
install || { $sudo apt-get update -q >/dev/null && install; }
chromium --version
