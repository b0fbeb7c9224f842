"""Audio stages: log-Mel (and later Whisper encoder and VGGish features)."""
