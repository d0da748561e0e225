import sys; sys.path.insert(0, "/tmp")
from fuzzstat import run
def test_x(live_server): run(live_server)
