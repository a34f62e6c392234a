"""NeuroScan's importable client side: `from neuroscan.client import Client`."""
