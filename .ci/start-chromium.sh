#!/usr/bin/env bash
# Headless Chromium for the report/UI rendering tests (Debian package); sourced by .ci/run, idempotent.
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/dev/null 2>&1 || echo "chromium could not be installed; its tests will skip"
fi
command -v chromium >/dev/null 2>&1 && chromium --version || true
