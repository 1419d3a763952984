"""Advisor Gateway (导购网关)."""

__version__ = "0.1.0"
