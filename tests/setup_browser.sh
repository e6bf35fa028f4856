#!/usr/bin/env bash
# Test set-up for tests/test_web.py: Debian's Chromium (Playwright drives it; no browser
# download). Installs the `chromium` package when /usr/bin/chromium is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing Debian's chromium package for the browser test" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium \
  >/dev/null
/usr/bin/chromium --version >&2
