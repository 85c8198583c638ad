"""Reusable test rigs: isolated Open vSwitch instances, network namespaces, a controller runner."""
