"""An MCP (Model Context Protocol) server for Stockade: agents get sandboxes as tools.

``stockade mcp`` serves it over stdio; the Stockade server serves it over streamable HTTP
at ``/mcp``. Both build it with :func:`build_server`, on top of the async SDK, so an agent's
calls are checked by the API as its caller's, like any other client's. Needs the ``mcp``
extra (``pip install 'stockade[mcp]'``). See docs/mcp.md.

Example::

    from stockade.mcp import build_server

    build_server().run("stdio")
"""

from stockade.mcp.session import Connection, SessionDefaults, SessionSandboxes
from stockade.mcp.tools import build_server

__all__ = ["Connection", "SessionDefaults", "SessionSandboxes", "build_server"]
