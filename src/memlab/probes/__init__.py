"""memlab.probes."""
