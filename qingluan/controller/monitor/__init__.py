"""Traffic monitoring: sFlow collection, threshold events and their reactions."""
