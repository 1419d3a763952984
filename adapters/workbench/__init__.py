"""Workbench: the built-in web IM for clerks, for brands without DingTalk or WeCom."""
