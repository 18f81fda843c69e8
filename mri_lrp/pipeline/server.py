"""Imported first, and only, by the workers' fork server: when the run ends, the server leaves at once.

The server holds no files or buffers of its own, but it has torch and the writers imported, and tearing those
modules down takes about half a second, during which anything waiting for the run's output pipes to close
(cron, a job script's capture, `$(mri-lrp ...)`) waits too. Registered first, this handler runs after every
other exit handler and ends the process without that teardown.
"""

import atexit
import os

atexit.register(os._exit, 0)
