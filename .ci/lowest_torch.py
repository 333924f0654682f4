"""Print the lowest torch release pyproject.toml declares (`torch>=X.Y` -> X.Y.0), so CI's
second stage tests exactly what the project promises."""

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
for requirement in pyproject["project"]["dependencies"]:
    match = re.fullmatch(r"torch\s*>=\s*([0-9.]+)(\s*,.*)?", requirement.strip())
    if match:
        version = match.group(1)
        print(version if version.count(".") == 2 else f"{version}.0")
        sys.exit(0)
sys.exit("pyproject.toml declares no torch>=X lower bound")
