#!/usr/bin/env sh
# Prints a working Python 3.12 interpreter: python3.12 on PATH, else pyenv's newest 3.12.x.
for candidate in python3.12 $(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V -r); do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
    "$candidate" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
echo "Python 3.12 not found: install it (e.g. 'pyenv install 3.12') or put python3.12 on PATH" >&2
exit 1
