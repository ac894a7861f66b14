"""`python -m host_tools.cloud.ingest`, with every ledger write transaction stalled before its
COMMIT, for the SIGKILL-mid-batch tests (tests/test_ingest.py): a fixture's patch, so the product
carries no test hook.

    python tests/ingest_stalled.py STALL_MS STALL_FILE <ingest arguments...>

Before each COMMIT it appends the transaction's committed-row count to STALL_FILE (the tests wait
for a count > 0: a batch with rows in flight), then, if rows are in flight, sleeps STALL_MS (a
read's commit is not stalled: since the chain routing, ingest reads a device's key history before
its first batch, and a stalled read per device kept the first batch from the commit for longer
than the tests wait). EDGEPAY_STALL_READS=1 stalls every commit, reads too (a worker slow at
everything: the overload test)."""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_tools.cloud import ingest  # noqa: E402
from host_tools.cloud.ledger import Ledger  # noqa: E402
from host_tools.cloud.ledger_pg import PgLedger  # noqa: E402
from host_tools.cloud.ledger_sqlite import SqliteLedger  # noqa: E402

stall_s, stall_file, argv = float(sys.argv[1]) / 1000.0, sys.argv[2], sys.argv[3:]
STALL_READS = os.environ.get("EDGEPAY_STALL_READS") == "1"   # the overload test: every commit slow
rows = [0]
row = Ledger._row


def counted_row(r, now):
    rows[0] += 1
    return row(r, now)


def stalled(commit):
    def _commit(self):
        n, rows[0] = rows[0], 0
        with open(stall_file, "a") as f:
            f.write(f"{n}\n")
        if n or STALL_READS:   # a batch with rows in flight; a read's commit (a lookup) only if asked
            time.sleep(stall_s)
        commit(self)
    return _commit


Ledger._row = staticmethod(counted_row)
for cls in (SqliteLedger, PgLedger):
    cls._commit = stalled(cls._commit)
sys.exit(ingest.main(argv))
