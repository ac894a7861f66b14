"""The cloud side of edgepay (CPython): what a cloud service builds on. docs/cloud-sdk.md is the guide.

    registry.Registry        devices, their keys and the per-device cloud->device seq counter
    commands.CommandClient   signed commands followed to their outcome (sync + asyncio), and time answers
    ingest.IngestWorker      session records -> ledger, then the signed cumulative ack (shared subscription)
    ledger_open.open_ledger  the money ledger: SQLite (ledger_sqlite) or PostgreSQL (ledger_pg)
    sessions.SessionService  pay-after authorisation (auth_req -> auth) and settlement of closed sessions
    session_store.SessionStore  the session service's durable state, in the ledger's database
    payafter                 the PayAfterProvider interface and ScriptedProvider, its test double
    fees                     protocol/FEES.md, the cloud's own implementation
    mqtt.CloudMQTT           the paho connection every worker uses (TCP_NODELAY, resubscribe)
    timeserver.TimeServer    answers each device's time_req (nonce echoed, signed): SPEC §5

Cloud workers connect to the broker's cloud listener (host_tools/broker.py, docs/broker.md).
"""
