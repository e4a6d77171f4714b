"""Files: reading and writing what noiseshift stores on disk."""
