#!/usr/bin/env bash
# The browser test's dependencies: Debian's Chromium and Segment's browser SDK from npm
# (test/browser/package-lock.json). Installs what is missing; prints nothing when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v "${TALLY_CHROMIUM:-chromium}" >/dev/null; then
	echo "installing Debian's chromium for the browser test" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
if [ ! -f test/browser/node_modules/.package-lock.json ] ||
	[ test/browser/package-lock.json -nt test/browser/node_modules/.package-lock.json ]; then
	npm ci --prefix test/browser --no-audit --no-fund --loglevel=error >&2
fi
