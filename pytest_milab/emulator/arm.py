"""Placeholder until this service is built."""

from __future__ import annotations

from starlette.applications import Starlette


def build_app(cloud, tokens) -> Starlette:
    return Starlette(routes=[])
