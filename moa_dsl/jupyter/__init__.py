"""The notebook face: the `%%moa` magic, the live run panel and rich display (IPython, ipywidgets)."""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:  # `%load_ext moa_dsl.jupyter`
    from .magics import MoaMagics  # IPython is imported only when a notebook asks for the magic

    ipython.register_magics(MoaMagics)
