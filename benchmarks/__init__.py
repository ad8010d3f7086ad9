"""Measured claims: each benchmark prints one JSON object as its last line."""
