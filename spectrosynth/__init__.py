"""spectrosynth."""
