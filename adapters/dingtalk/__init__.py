"""DingTalk (钉钉): the clerk side for DingTalk brands — 1:1 robot chat, work notifications, org events."""
