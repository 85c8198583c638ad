"""qingluan (青鸾): an SDN network plugin for Docker on Open vSwitch."""

__version__ = "0.1.0"
