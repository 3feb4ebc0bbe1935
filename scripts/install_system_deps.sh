#!/usr/bin/env bash
# Installs the Debian packages progemu needs when they are missing:
#   demo:           a Java runtime for METEOR 1.5 (pycocoevalcap runs its bundled jar) -- the main job;
#   test (default): the same, plus chromium + chromium-driver for the browser test of `progemu serve`.
# Never downloads a browser from a test tool; uses Debian's packages only.
# Usage: bash scripts/install_system_deps.sh [demo|test]
set -euo pipefail
target="${1:-test}"
case "$target" in
  demo|test) ;;
  *) echo "install_system_deps.sh: unknown target '$target' (use 'demo' or 'test')" >&2; exit 2 ;;
esac
need=()
command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
if [ "$target" = test ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "progemu: missing system packages: ${need[*]} (run as root or install them: apt-get install -y ${need[*]})" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "progemu: not a Debian-like system; please install: ${need[*]} (a Java runtime$([ "$target" = test ] && echo ', chromium, chromedriver'))" >&2
  exit 0
fi
echo "progemu: installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
