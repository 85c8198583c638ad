"""Intrusion-detection inputs: alert formats the driver receives from a host's IDS."""
