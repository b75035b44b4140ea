"""Data: the embedded benchmark, the modality input pipeline, datasets and scenario streams."""
