#!/bin/sh
# Rebuilds dist/ (committed; the Rust build embeds it and never needs Node):
#   cd console && sh build.sh
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
mkdir -p dist
npx esbuild src/main.js --bundle --minify --format=iife --target=es2020 \
  --legal-comments=eof --outfile=dist/app.js
cat node_modules/uplot/dist/uPlot.min.css src/style.css > dist/app.css
cp src/index.html dist/index.html
ls -l dist
