"""Checks that the running Python environment has exactly the pinned test peers (peers-requirements.txt).

Prints one line per distribution that is missing or at another version, and exits 1 if there is any; exits 0 and
prints nothing when every pin holds. Run with the virtual environment's python3, so it judges that environment.
    check_peers.py REQUIREMENTS_FILE
"""

import re
import sys
from importlib import metadata


def pins(path):
    for raw in open(path, encoding="utf-8"):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line)
        if not match:
            raise SystemExit(f"{path}: not an exact pin: {line!r}")
        yield match.group(1), match.group(3)


def main():
    problems = []
    for name, wanted in pins(sys.argv[1]):
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} {wanted} is not installed")
            continue
        if found != wanted:
            problems.append(f"{name} is {found}, pinned {wanted}")
    for line in problems:
        print(line)
    sys.exit(1 if problems else 0)


main()
