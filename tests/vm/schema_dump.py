# Print msg's tables, one JSON line a type: [type, name, full topic for "gate-001", topic level,
# [[key, name, kind, required, lo, hi], ...]] (a line at a time: the 64K heap stays roomy).
import json

import msg
import msgschema

for t in msgschema.types():
    print(json.dumps([t, msgschema.type_name(t), msgschema.topic("gate-001", t), msg.topic_suffix(t),
                      [list(f) for f in msgschema.fields(t)]]))
