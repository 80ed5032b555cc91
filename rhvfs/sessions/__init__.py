"""See CONTRACT.md / module docstrings."""
