#!/usr/bin/env sh
# Prints a working Python 3.11 interpreter: python3.11 on PATH, else pyenv's newest 3.11.x.
for candidate in python3.11 $(ls -d "$(pyenv root 2>/dev/null)"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -V -r); do
  if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then
    "$candidate" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
echo "Python 3.11 not found: install it (e.g. 'apt-get install python3.11' or 'pyenv install 3.11')" >&2
exit 1
