"""Human-readable reports of scans and batches (PDF via reportlab; no TensorFlow)."""
