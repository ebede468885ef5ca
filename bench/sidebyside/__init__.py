"""Side-by-side benchmark of this project against the official Pyramid Flow code (bench/vs_official.py)."""
