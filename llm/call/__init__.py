"""Building and validating a call before any I/O."""
