#!/usr/bin/env bash
# Installs relbooth's build and test dependencies from Debian 12 packages. Nothing is vendored and
# nothing is downloaded at build or run time. With --if-missing it does nothing when all are present.
set -euo pipefail
PKGS=(build-essential pkg-config libdnnl-dev libpng-dev libjpeg62-turbo-dev libwebp-dev libzip-dev
      libjansson-dev libyaml-dev libutf8proc-dev
      libopenmpi-dev openmpi-bin)  # MPI: data-parallel runs (docs/distributed.md)
# for `make fuzz` and the sanitizer run (clang's libFuzzer and runtime)
EXTRA=(clang libclang-rt-14-dev valgrind)

missing=()
for p in "${PKGS[@]}" "${EXTRA[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${1:-}" = "--if-missing" ] && [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all packages present"
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
