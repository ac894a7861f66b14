# Print msg.ERRORS as JSON (checked against the SPEC §7 table by the host).
import json

import msg

print(json.dumps(msg.ERRORS))
