"""Implementations of the engine's ``Tools`` port (see ``engine/ports.py`` and ``engine/tools.py``).

* :mod:`tools.mcp` — ``MCPTools``: the tools of the MCP servers the owner configured
  (``MCP_SERVERS``), over stdio or streamable HTTP, with the official ``mcp`` SDK.

Imported by the composition root only when MCP servers are configured.
"""
