//! A replayed CSV trace (placeholder, filled in by the pipeline work).
