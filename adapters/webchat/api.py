"""Outbound for webchat: the "platform" is the customer's open page, reached through the hub."""

from adapters.webim import push

__all__ = ["push"]
