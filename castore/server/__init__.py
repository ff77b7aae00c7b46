"""``castore serve``: the HTTP/JSON API over a store (``pip install 'castore[server]'``).

The modules: ``operations`` (the table of operations: request structs, Store
calls, the lines they answer with), ``errors`` (exceptions as statuses and
stable codes), ``app`` (the Starlette app: auth, limits, access log, metrics),
``openapi`` (the OpenAPI document made from the table) and ``run`` (token,
listening checks, uvicorn). Nothing here is imported by the library or by the
other commands: only ``castore serve`` loads the server stack (docs/SERVER.md).
"""
