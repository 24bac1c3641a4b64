#!/usr/bin/env bash
# Install the Debian packages the offline default needs, and any named as arguments (the tests
# add chromium, which renders the report, and the Spanish prompts), only those that are missing.
set -euo pipefail
packages=(espeak-ng flite sonic-pi-samples asterisk-core-sounds-en-wav asterisk-core-sounds-en
          pocketsphinx-testdata sctk "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing Debian packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
