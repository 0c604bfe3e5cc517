#!/usr/bin/env bash
# Installs the system packages the native core builds against, when missing.
# As root it uses apt-get; otherwise it names what to install and fails.
set -euo pipefail

packages=(libfaiss-dev libopenblas-dev libssl-dev cmake g++)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "fpmatch needs FAISS 1.7.3+ (C++ headers, static library, CMake config), BLAS and OpenSSL 3 (static libcrypto): ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
