#!/usr/bin/env bash
# Jakiro-star on the vicuna template over the six benchmarks; settings: see eval_all.sh.
exec bash "$(dirname "$0")/eval_all.sh" vicuna Jakiro-star
