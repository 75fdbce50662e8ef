"""Helpers of the browser tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Page

from chancy_core import Chancy

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("CHANCY_E2E_CHROMIUM", "/usr/bin/chromium")
PASSWORD = secrets.token_urlsafe(12)


@dataclass
class World:
    """What the tests talk to."""

    base_url: str
    dsn: str
    app: Chancy
    tmp: Path


def screenshot(page: Page, name: str) -> None:
    """Save the page under docs/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)
