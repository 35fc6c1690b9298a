#!/usr/bin/env sh
# Usage: find-python.sh 3.12 — prints a working interpreter of that version: pythonX.Y on PATH,
# else pyenv's newest X.Y.* build. Fails with a clear message when there is none.
version="$1"
major=${version%%.*}
minor=${version#*.}
for candidate in "python$version" $(ls -d "$(pyenv root 2>/dev/null)"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V -r); do
  if "$candidate" -c "import sys; assert sys.version_info[:2] == ($major, $minor)" >/dev/null 2>&1; then
    "$candidate" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
echo "Python $version not found: install it (apt-get install python$version, or pyenv install $version)" >&2
exit 1
