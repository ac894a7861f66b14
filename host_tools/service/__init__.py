"""`edgepay serve`: the cloud side as one service people run (issue 13, first slice).

    config.py  the TOML config file, with environment overrides
    api.py     the HTTP API (FastAPI, versioned under /v1, OpenAPI at /openapi.json), /healthz,
               /readyz and Prometheus /metrics
    run.py     the parts (ingest, the time responder, the campaign runner, the HTTP server), each
               startable alone (`--only`), so N of each scale out against one PostgreSQL

FastAPI over Starlette with uvicorn: an asyncio server, so a request that waits seconds for a
device's signed result (CommandClient.asend) holds no thread; typed request and response models
give the OpenAPI document for free; prometheus-client is the field's exporter. The layer sits
above host_tools/cloud and below the CLI.
"""
