"""memlab.train."""
