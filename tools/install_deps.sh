#!/usr/bin/env bash
# Installs the Debian packages lethe needs to build and test, when run as root and they
# are missing; otherwise lists what is missing and exits 1.
#   tools/install_deps.sh           install (root) or report (non-root)
#   tools/install_deps.sh --check   report only
#   tools/install_deps.sh --fuzz    also what tools/fuzz needs (clang, its OpenMP runtime)
set -euo pipefail

PACKAGES=(
  g++ cmake make ninja-build pkg-config       # toolchain
  libopenblas-openmp-dev                      # BLAS sharing our OpenMP threads
  libyaml-cpp-dev nlohmann-json3-dev          # configs, safetensors headers
  libhdf5-dev                                 # checkpoints and token datasets
  libssl-dev                                  # SHA-256 (OpenSSL libcrypto)
  zlib1g-dev                                  # zlib-ratio membership inference
  libopenmpi-dev openmpi-bin                  # multi-process runs and their tests
  libgtest-dev libbenchmark-dev               # tests, micro-benchmarks
  python3                                     # fixture and benchmark scripts
)

fuzz=0
check=0
for a in "$@"; do
  case "$a" in
    --fuzz) fuzz=1 ;;
    --check) check=1 ;;
  esac
done
[ "$fuzz" -eq 1 ] && PACKAGES+=(clang libomp-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$check" -eq 1 ] || [ "$(id -u)" -ne 0 ]; then
  echo "lethe: missing Debian packages: ${missing[*]}" >&2
  echo "lethe: install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "lethe: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "lethe: dependencies installed" >&2
