"""Webchat: the customer channel for the brand's own app, mini-program or H5 page."""
