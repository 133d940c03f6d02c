"""memlab.eval."""
