#!/bin/sh
# Installs the build and data dependencies on Debian when any is missing.
# Set VMC_NO_INSTALL=1 to only check.
set -e
need=""
have_hdr() { [ -e "$1" ]; }
have_hdr /usr/include/zlib.h          || need="$need zlib1g-dev"
have_hdr /usr/include/stb/stb_image.h || need="$need libstb-dev"
have_hdr /usr/include/cjson/cJSON.h   || need="$need libcjson-dev"
command -v cc >/dev/null 2>&1         || need="$need gcc"
command -v make >/dev/null 2>&1       || need="$need make"
[ -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need="$need dataset-fashion-mnist"
[ -n "$need" ] || exit 0
if [ "${VMC_NO_INSTALL:-0}" = 1 ]; then
  echo "missing Debian packages:$need" >&2; exit 1
fi
echo "installing:$need" >&2
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
