"""Outbound for the workbench: the clerk's open tabs, reached through the hub."""

from adapters.webim import push

__all__ = ["push"]
