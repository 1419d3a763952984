"""Bots: each exports a Router. They enqueue into the outbox and never call adapters."""

from gateway.router import Router


def root_router() -> Router:
    from bots import commands, delivery, lifecycle, opt_out, relay, welcome

    # Order matters: the first matching handler wins (opt-out keywords before relaying).
    return Router("root").include(welcome.router, lifecycle.router, delivery.router, opt_out.router, commands.router, relay.router)
