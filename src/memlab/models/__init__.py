"""memlab.models."""
