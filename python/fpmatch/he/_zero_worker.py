"""Entry point of an encryption worker process (see :mod:`fpmatch.he._zeros`)."""

from __future__ import annotations

if __name__ == "__main__":
    from fpmatch.he._zeros import serve

    serve()
