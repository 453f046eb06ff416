"""The recorder: one more consumer of a stage, writing forwarded frames to disk."""
