"""Analysis: what the recorded runs and the models say, beyond the guidance itself."""
