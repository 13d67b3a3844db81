#!/bin/sh
# The house style (.clang-format: Google, 100 columns) over every C++ file in the repository: any
# file clang-format would change fails the test. Fix with: clang-format-14 -i <file>.
set -eu
cd "$(dirname "$0")/.."
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  files=$(git ls-files '*.cc' '*.h')
else
  files=$(find engine server clients bench tests -name '*.cc' -o -name '*.h')
fi
bad=0
for f in $files; do
  if ! clang-format-14 --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f"
    bad=$((bad + 1))
  fi
done
echo "clang-format: $(echo "$files" | wc -w) files, $bad not formatted"
[ "$bad" -eq 0 ]
