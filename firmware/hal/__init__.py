# Hardware abstraction: each module picks the `machine` implementation on a board and a simulated
# one on the unix VM, so the agent and apps above never ask which they run on.
import sys

ON_VM = sys.platform in ("linux", "darwin")
