#!/bin/sh
# The web console's browser libraries (htmx, Chart.js), from the npm registry at
# install time, at the versions pinned in src/tramontane/console/assets/package-lock.json.
# They land in that folder's node_modules (ignored by git) and are served by the
# console itself: no page ever loads a script from another origin.
# Needs npm (Debian: the `npm` package, see install-system-deps.sh). Safe to run again.
set -eu
cd "$(dirname "$0")/../src/tramontane/console/assets"
if [ -f node_modules/htmx.org/dist/htmx.min.js ] && [ -f node_modules/chart.js/dist/chart.umd.min.js ] \
    && [ node_modules/.package-lock.json -nt package-lock.json ]; then
    exit 0
fi
npm ci --ignore-scripts --no-audit --no-fund --omit=dev
