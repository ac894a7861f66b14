"""`python -m host_tools.cloud.ingest`, with every ledger write transaction stalled before its
COMMIT, for the SIGKILL-mid-batch tests (tests/test_ingest.py): a fixture's patch, so the product
carries no test hook.

    python tests/ingest_stalled.py STALL_MS STALL_FILE <ingest arguments...>

Before each COMMIT it appends the transaction's committed-row count to STALL_FILE (the tests wait
for a count > 0: a batch with rows in flight), then sleeps STALL_MS."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_tools.cloud import ingest  # noqa: E402
from host_tools.cloud.ledger import Ledger  # noqa: E402
from host_tools.cloud.ledger_pg import PgLedger  # noqa: E402
from host_tools.cloud.ledger_sqlite import SqliteLedger  # noqa: E402

stall_s, stall_file, argv = float(sys.argv[1]) / 1000.0, sys.argv[2], sys.argv[3:]
rows = [0]
row = Ledger._row


def counted_row(r, now):
    rows[0] += 1
    return row(r, now)


def stalled(commit):
    def _commit(self):
        with open(stall_file, "a") as f:
            f.write(f"{rows[0]}\n")
        rows[0] = 0
        time.sleep(stall_s)
        commit(self)
    return _commit


Ledger._row = staticmethod(counted_row)
for cls in (SqliteLedger, PgLedger):
    cls._commit = stalled(cls._commit)
sys.exit(ingest.main(argv))
