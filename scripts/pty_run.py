"""Run a command on a pseudo-terminal (stdin, stdout and stderr), as from an operator's shell,
and copy everything it wrote there to our stdout. Exits with the command's status."""
import os
import pty
import sys

status = pty.spawn(sys.argv[1:])
sys.stdout.flush()
sys.exit(os.waitstatus_to_exitcode(status))
