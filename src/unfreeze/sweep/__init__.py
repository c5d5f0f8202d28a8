"""Sweeps: a file of rows (spec), the resumable runner, and where runs execute (local, Ray)."""
