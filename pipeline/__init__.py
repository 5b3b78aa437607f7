"""Data stages: sources, cleaning, dedup, splitting, shard building, and the stage runner."""
