"""Typed keys for what the application holds."""

from aiohttp import web

from .config import Settings
from .store import Store
from .venue import Venue

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
VENUE = web.AppKey("venue", Venue)
