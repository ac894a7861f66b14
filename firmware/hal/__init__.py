# Hardware abstraction: each module picks the `machine` implementation on a board and a simulated
# one on the unix VM, so the agent and apps above never ask which they run on.
import sys

ON_VM = sys.platform in ("linux", "darwin")


def build(board, loop=None, sim=None):
    """The board's peripherals (see hal/io.py): machine drivers on a board, the simulator link on a
    sim board. Imported on demand so that boot code paying for `hal` pays nothing for this."""
    from hal import io
    return io.build(board, loop, sim)
