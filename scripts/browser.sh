#!/usr/bin/env bash
# Install the headless browser the end-to-end page test drives: Debian's chromium and
# its matching chromedriver (selenium talks to it; nothing is downloaded at test time),
# and Debian's nodejs, which runs the page scripts' unit tests (tests/js, node --test).
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v node >/dev/null; then
    echo "browser: $(chromium --version 2>/dev/null | head -1), chromedriver present, node $(node --version)"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "browser: installing chromium, chromium-driver and nodejs from Debian"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core nodejs >/dev/null
echo "browser: $(chromium --version 2>/dev/null | head -1)"
