"""Entry point of the stand-in Synapse image: the two commands the deployment
guide (docs/deployment.md) gives the official image.

    (no argument)   run Synapse with /data/homeserver.yaml
    generate        write /data/homeserver.yaml, its log config and signing
                    key for $SYNAPSE_SERVER_NAME ($SYNAPSE_REPORT_STATS: yes/no)

The official image's start.py renders its own template; this one asks Synapse
itself (--generate-config). --open-private-ports makes the listener bind all
addresses, as the official template does, instead of loopback only, so that
other containers reach port 8008.
"""

import os
import sys

PYTHON = "/opt/synapse/bin/python"
DATA = "/data"
CONFIG = os.path.join(DATA, "homeserver.yaml")

args = sys.argv[1:]
if args == ["generate"]:
    missing = [v for v in ("SYNAPSE_SERVER_NAME", "SYNAPSE_REPORT_STATS") if not os.environ.get(v)]
    if missing:
        sys.exit(f"generate needs {' and '.join(missing)} in the environment")
    os.execv(PYTHON, [
        PYTHON, "-m", "synapse.app.homeserver", "--generate-config",
        "--server-name", os.environ["SYNAPSE_SERVER_NAME"],
        "--report-stats", os.environ["SYNAPSE_REPORT_STATS"],
        "--config-path", CONFIG, "--data-directory", DATA, "--open-private-ports",
    ])
elif not args:
    if not os.path.exists(CONFIG):
        sys.exit(f"{CONFIG} does not exist: run `generate` first")
    os.execv(PYTHON, [PYTHON, "-m", "synapse.app.homeserver", "--config-path", CONFIG])
else:
    os.execvp(args[0], args)
