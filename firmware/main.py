# The entry point a board runs at boot (as source): firmware/start.py, compiled, does the rest.
from start import main
main()
