"""The driver-side IDS: Suricata on a mirror port, its configuration and its EVE alerts."""
