#!/usr/bin/env bash
# Installs the system packages the native core builds against, when missing, and the
# PostgreSQL server whose binaries the store tests start a throwaway instance of.
# As root it uses apt-get; otherwise it names what to install and fails. The server is
# optional: where it cannot be installed the PostgreSQL store tests are skipped.
set -euo pipefail

packages=(libfaiss-dev libopenblas-dev libssl-dev cmake g++)
optional=(postgresql)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
missing_optional=()
for p in "${optional[@]}"; do
  installed "$p" || missing_optional+=("$p")
done
[ ${#missing[@]} -eq 0 ] && [ ${#missing_optional[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
  if [ ${#missing_optional[@]} -gt 0 ]; then
    echo "not installed: ${missing_optional[*]} (the PostgreSQL store tests will be skipped)" >&2
  fi
  [ ${#missing[@]} -eq 0 ] && exit 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "fpmatch needs FAISS 1.7.3+ (C++ headers, static library, CMake config), BLAS and OpenSSL 3 (static libcrypto): ${missing[*]}" >&2
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  fi
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ${#missing_optional[@]} -gt 0 ]; then
  echo "installing system packages: ${missing_optional[*]}"
  apt-get install -y -qq --no-install-recommends "${missing_optional[@]}" \
    || echo "could not install ${missing_optional[*]}: the PostgreSQL store tests will be skipped" >&2
fi
