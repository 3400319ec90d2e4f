"""Installs a requirements file into a virtual environment with uv, from the places this
machine's pip configuration names (`pip config list`: its files and PIP_* variables), so that it
gets what `pip install -r` would, in about a third of the time.

    python tools/uv_install.py VENV REQUIREMENTS

Exits 3 without installing when a pip setting has no uv equivalent here (tools/setup_venv.sh
then installs with pip); otherwise with uv's exit status.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

# pip's option -> uv's, for settings that name where packages come from
SAME_PLACES = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
               "constraint": "--constraints", "trusted-host": "--allow-insecure-host"}
# pip's option -> the variable uv reads instead
AS_VARIABLES = {"cert": "SSL_CERT_FILE", "timeout": "UV_HTTP_TIMEOUT", "default-timeout": "UV_HTTP_TIMEOUT"}
# settings about pip's own output and bookkeeping, which do not change what is installed
IRRELEVANT = {"disable-pip-version-check", "no-cache-dir", "cache-dir", "progress-bar", "quiet", "verbose",
              "no-input", "root-user-action", "no-warn-script-location", "no-color", "retries"}
# A later scope overrides an earlier one, as in pip: the config files' [global], then [install],
# then PIP_* variables.
SCOPES = ("global", "install", ":env:")
LINE = re.compile(r"^(?P<scope>[^.]+)\.(?P<key>[a-z0-9-]+)=(?P<quote>['\"])(?P<value>.*)(?P=quote)$")


class NoEquivalent(ValueError):
    """A pip setting uv would not follow the same way."""


def uv_options(pip_config: str) -> tuple[list[str], dict[str, str]]:
    """(uv pip install options, environment variables) for the text `pip config list` prints."""
    chosen: dict[str, tuple[int, str]] = {}
    for line in filter(None, map(str.strip, pip_config.splitlines())):
        match = LINE.match(line)
        if match is None:
            raise NoEquivalent(f"unread pip setting {line!r}")
        if match["scope"] not in SCOPES:
            continue  # another command's section ([download], [wheel], ...)
        rank = SCOPES.index(match["scope"])
        if rank >= chosen.get(match["key"], (-1, ""))[0]:
            chosen[match["key"]] = (rank, match["value"])
    options, variables = [], {}
    for key, (_, value) in chosen.items():
        if key in SAME_PLACES:
            for item in value.split():
                options += [SAME_PLACES[key], item]
        elif key in AS_VARIABLES:
            variables[AS_VARIABLES[key]] = value
        elif key == "no-index" and value.lower() in ("1", "true", "yes", "on"):
            options.append("--no-index")
        elif key not in IRRELEVANT:
            raise NoEquivalent(f"pip setting {key}={value!r}")
    return options, variables


def main(argv=None) -> int:
    venv, requirements = argv if argv is not None else sys.argv[1:]
    python = os.path.join(venv, "bin", "python")
    listed = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    try:
        options, variables = uv_options(listed.stdout)
    except NoEquivalent as reason:
        print(f"uv_install.py: {reason} has no uv equivalent here; installing with pip", file=sys.stderr)
        return 3
    # pip takes the best version from all indexes together and compiles what it installs
    command = [os.path.join(venv, "bin", "uv"), "pip", "install", "--quiet", "--python", python,
               "--index-strategy", "unsafe-best-match", "--compile-bytecode", *options, "-r", requirements]
    return subprocess.run(command, env={**os.environ, **variables}).returncode


if __name__ == "__main__":
    sys.exit(main())
