"""HTTP endpoints, one blueprint per module; shared request plumbing lives in deps.py."""
