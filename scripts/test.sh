#!/usr/bin/env bash
# Create a fresh virtual environment, install feedline with everything the tests need, run the whole suite.
# torch 2.13.0 (the local CPU wheel) goes in first so nothing pulls CUDA packages; the run fails if any did.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FEEDLINE_TEST_VENV:-.venv-test}"
PY="${PYTHON:-python3}"

rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[service,test,integrations]"
# NeMo AutoModel's own dependencies pin CUDA kernels, another transformers and protobuf 6: its code only.
"$VENV/bin/python" -m pip install -q --no-deps "nemo-automodel==0.7.0"
# Debian's chromium and the Playwright driver for the browser test of the mask page (never Playwright's browsers).
bash scripts/install_browser.sh "$VENV/bin/python" || echo "WARNING: browser install failed; tests/test_page_browser.py will be SKIPPED" >&2

# nftables and dnsmasq for the network fault tests (tests/test_reliability_network.py: namespaces, loss and
# partitions, a headless-Service DNS name); without them (or without root) that module is skipped, loudly.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! { command -v nft && command -v dnsmasq; } >/dev/null; then
    apt-get install -y -q nftables dnsmasq >/dev/null \
        || echo "WARNING: nftables/dnsmasq install failed; tests/test_reliability_network.py will be SKIPPED" >&2
fi

if "$VENV/bin/python" -m pip list --format=freeze | grep -i '^nvidia-'; then
    echo "error: nvidia-* packages were installed; torch must stay the 2.13.0 CPU wheel" >&2
    exit 1
fi

# The check gate: formatting, lint and strict typing, zero findings (scripts/check.sh).
bash scripts/check.sh "$VENV/bin/python"

export TOKENIZERS_PARALLELISM=false
if [ "${FEEDLINE_CI_BENCH:-0}" = "1" ]; then
    BENCH_OUT="$(mktemp -d)"
    { "$VENV/bin/python" -m pip install -q -e ".[bench]" && "$VENV/bin/python" -m bench --quick --out "$BENCH_OUT"; } \
        || echo "WARNING: python -m bench --quick failed (benchmarks are not part of CI's pass/fail)" >&2
    rm -rf "$BENCH_OUT"
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
