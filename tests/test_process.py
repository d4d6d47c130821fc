"""stop_on_signals: a burst of SIGTERMs stops a process whose main thread waits on the event.
(A handler that called Event.set itself hung in about one of ten such bursts: a second signal
arrived while the first handler held the event's lock.)"""
import signal
import subprocess
import sys

# it leaves with os._exit: the interpreter's own exit puts the default SIGTERM action back
# while the last signals of the burst may still be arriving
CHILD = """
import os
from npuflow.process import stop_on_signals
stop = stop_on_signals()
print("ready", flush=True)
while not stop.wait(0.0005):
    pass
print("stopped", flush=True)
os._exit(0)
"""


def test_a_burst_of_signals_stops_the_process_every_time():
    for _ in range(10):
        p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline() == "ready\n"
            for _ in range(300):
                p.send_signal(signal.SIGTERM)
            assert p.wait(10) == 0
            assert p.stdout.read() == "stopped\n"
        finally:
            p.kill()
            p.wait()
