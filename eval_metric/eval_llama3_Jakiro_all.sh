#!/usr/bin/env bash
# Jakiro on the llama3 template over the six benchmarks; settings: see eval_all.sh.
exec bash "$(dirname "$0")/eval_all.sh" llama3 Jakiro
