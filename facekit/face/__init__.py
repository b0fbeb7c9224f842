"""Face stages: detection (and later tracking, landmarks, alignment, crops, pose)."""
