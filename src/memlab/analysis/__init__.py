"""memlab.analysis."""
