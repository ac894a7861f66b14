# Stand-in for micropython-lib's ntptime (an NTP server is not reachable from the test machine):
# counts settime() calls for tests/vm/net_cases.py.
calls = 0


def settime():
    global calls
    calls += 1
