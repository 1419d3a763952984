from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.adapter import AccountConfig


class WorkbenchConfig(AccountConfig):
    platform: Literal["workbench"] = "workbench"
    max_text: int = Field(4000, ge=1)
