#!/usr/bin/env bash
# Print the newest interpreter of Python MAJOR.MINOR found on this machine, or exit 1.
# Looks on PATH (pythonX.Y) and in pyenv's versions ($PYENV_ROOT, ~/.pyenv), so CI can
# test the Pythons users have beside Debian's own /usr/bin/python3.
set -euo pipefail
want="${1:?usage: find-python.sh MAJOR.MINOR}"
candidates=()
if p="$(command -v "python$want" 2>/dev/null)" && [[ "$p" != */shims/* ]]; then candidates+=("$p"); fi
for root in "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
  [ -n "$root" ] || continue
  for p in "$root"/versions/"$want".*/bin/python"$want"; do
      [ -x "$p" ] && candidates+=("$p")
  done
done
best="" best_ver=""
for p in "${candidates[@]}"; do
  ver="$("$p" -c 'import sys; print("%d.%d.%05d" % sys.version_info[:3])' 2>/dev/null)" || continue
  [ "${ver%.*}" = "$want" ] || continue
  if [ -z "$best" ] || [[ "$ver" > "$best_ver" ]]; then best="$p" best_ver="$ver"; fi
done
[ -n "$best" ] || exit 1
echo "$best"
